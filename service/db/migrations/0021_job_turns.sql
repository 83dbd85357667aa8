-- Background jobs that read a whole table (the pool headroom check counts every live binding) run once per
-- period for the whole service, not once per process: the process that takes a job's turn pushes its due
-- time on. A new, small table.
CREATE TABLE job_turns (
    job     text PRIMARY KEY,
    due_at  timestamptz NOT NULL
);
