-- Which account each device id belongs to: the first that logged in on it,
-- until an admin releases it. A first login inserts the row (no ON CONFLICT),
-- so that of two accounts racing for a new id, the second fails and, tried
-- again, finds the id taken.
CREATE TABLE device_bindings (
    device_id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

-- Each device's latest rejected confirmations, for the dispatcher to review,
-- kept to a bounded number with a count of the older ones dropped. (Every
-- first outcome stays in `confirmations`: this is only the review list.)
CREATE TABLE rejection_logs (
    device_id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);
