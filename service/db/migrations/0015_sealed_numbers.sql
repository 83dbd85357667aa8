-- Numbers at rest, step 1 of 2 (expand): each party number gets its ciphertext (_ct), blind index (_ix)
-- and masked form (_mask) beside the clear column; `masking migrate` then fills them in batches (online:
-- an older version may still be serving and writing clear rows, which the fill catches up with), and
-- migration 0016 drops the clear columns. Raw provider bodies, stored idempotent answers and events' data
-- are sealed in place by the same fill. data_keys lists every data key id a ciphertext may name.
ALTER TABLE sessions
    ADD COLUMN customer_ct bytea, ADD COLUMN customer_ix bytea, ADD COLUMN customer_mask text,
    ADD COLUMN agent_ct bytea, ADD COLUMN agent_ix bytea, ADD COLUMN agent_mask text;
ALTER TABLE bindings ADD COLUMN number_ix bytea, ADD COLUMN peer_ix bytea;
ALTER TABLE calls
    ADD COLUMN from_ct bytea, ADD COLUMN from_ix bytea, ADD COLUMN from_mask text,
    ADD COLUMN to_ct bytea, ADD COLUMN to_ix bytea, ADD COLUMN to_mask text;

CREATE TABLE data_keys (
    id        text PRIMARY KEY,
    added_at  timestamptz NOT NULL DEFAULT now()
);
