-- Root-secret fingerprints were the secret's last 4 characters (4
-- characters of a password at the end of a DSN). They are now a keyed hash
-- prefix computed when a version is stored; the old ones are dropped.
UPDATE connection_secrets SET fingerprint = '';
