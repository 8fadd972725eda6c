-- Each device's registered Ed25519 key and which of its signed
-- confirmations arrived (`domain::chain::DeviceChain`). A login that
-- registers a key inserts the row if there is none, then reads it locked:
-- of two logins racing with different keys, the second finds the first's.
CREATE TABLE device_chains (
    device_id text COLLATE "C" PRIMARY KEY,
    body jsonb NOT NULL
);

-- Proof images (photos uploaded by handhelds, drawn signatures), by the
-- SHA-256 of their bytes: each stored once, whoever sends it again.
CREATE TABLE images (
    digest text COLLATE "C" PRIMARY KEY,
    content_type text NOT NULL,
    bytes bytea NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- Photo uploads under way: the bytes received so far, appended chunk by
-- chunk at the offset each chunk names. Moved to `images` once whole and
-- checked against the digest.
CREATE TABLE image_uploads (
    digest text COLLATE "C" PRIMARY KEY,
    total bigint NOT NULL,
    bytes bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
