-- Placeholder so that this branch's migrations are numbered in turn: the events branch supplies 0004.
-- DELETE THIS FILE AT MERGE (the orders branch owns 0005 only).
SELECT 1;
