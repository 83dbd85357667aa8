-- Sessions refused per pool and minute (pool_exhausted), counted in the database so the console's pools
-- page shows a pool's refusals in the last hour summed over every service process. The sweeper deletes
-- rows older than a day.
CREATE TABLE pool_refusals (
    tenant_id  bigint NOT NULL REFERENCES tenants ON DELETE CASCADE,
    pool       text NOT NULL,
    minute     timestamptz NOT NULL,
    refused    integer NOT NULL,
    PRIMARY KEY (tenant_id, pool, minute)
);
