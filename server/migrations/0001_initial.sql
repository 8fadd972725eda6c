-- The first layout of the PostgreSQL store. Every record is kept whole, as
-- JSON in `body`, exactly as the domain serializes it; the columns beside it
-- are the keys and the indexes that queries filter and sort by, written from
-- the same record in the same statement. Text keys sort byte-wise (COLLATE
-- "C"), as sled's keys do, so that listings come out in the same order on
-- both backends.

CREATE TABLE nodes (
    id text COLLATE "C" PRIMARY KEY,
    kind text NOT NULL,
    body jsonb NOT NULL
);

CREATE TABLE items (
    id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE customers (
    id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE accounts (
    username text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE stock (
    node_id text COLLATE "C" NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    body jsonb NOT NULL,
    PRIMARY KEY (node_id, item_id)
);

-- Numbered from the `ledger` counter while the counter's row is locked, so
-- that line numbers follow commit order.
CREATE TABLE ledger (
    seq bigint PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    device_id text COLLATE "C" NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX sessions_by_device ON sessions (device_id);

-- By the SHA-256 of the token: the token itself is never stored.
CREATE TABLE refresh_tokens (
    hash bytea PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE drafts (
    order_id text COLLATE "C" PRIMARY KEY,
    customer_id text COLLATE "C" NOT NULL,
    open boolean NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX drafts_open ON drafts (order_id) WHERE open;

CREATE TABLE receipts (
    seq bigint PRIMARY KEY,
    customer_id text COLLATE "C" NOT NULL,
    planned boolean NOT NULL,
    delivered boolean NOT NULL,
    backordered boolean NOT NULL,
    created_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX receipts_by_customer ON receipts (customer_id, seq);
CREATE INDEX receipts_unplanned ON receipts (seq) WHERE NOT planned;

CREATE TABLE customer_accounts (
    customer_id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

-- The last number given of each kind: `receipt`, `feed`, `ledger`. A writer
-- takes the row's lock with its UPDATE and holds it to its commit, so numbers
-- are given in commit order and none is skipped.
CREATE TABLE counters (
    name text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO counters (name, value) VALUES ('receipt', 0), ('feed', 0), ('ledger', 0);

-- A delivery is numbered like its receipt.
CREATE TABLE deliveries (
    seq bigint PRIMARY KEY,
    assignee text COLLATE "C",
    seller text COLLATE "C",
    open boolean NOT NULL,
    customer_id text COLLATE "C" NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    receipt_seq bigint NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX deliveries_by_assignee ON deliveries (assignee, seq) WHERE assignee IS NOT NULL;

-- Open deliveries carried by each courier: the load that planning balances.
CREATE TABLE courier_load (
    username text COLLATE "C" PRIMARY KEY,
    open bigint NOT NULL
);

-- Every change to a delivery that a courier holds or held; pulls read it.
CREATE TABLE courier_feed (
    change bigint PRIMARY KEY,
    courier text COLLATE "C" NOT NULL,
    delivery_seq bigint NOT NULL
);
CREATE INDEX courier_feed_by_courier ON courier_feed (courier, change);

-- The first outcome of every confirmation id.
CREATE TABLE confirmations (
    id text COLLATE "C" PRIMARY KEY,
    rejected boolean NOT NULL,
    received_at timestamptz NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX confirmations_rejected ON confirmations (received_at) WHERE rejected;

CREATE TABLE audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body jsonb NOT NULL
);

CREATE TABLE device_syncs (
    device_id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

-- Secrets every instance must share, such as the generated JWT signing key.
CREATE TABLE secrets (
    name text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
