-- Stores content-addressed bytes, or keeps the stored copy, with a TTL of at least ARGV[2] (keep_blob in
-- _blobs.lua). The reply is the same whether the bytes were there or not.
-- KEYS[1]  the bytes' key     ARGV[1]  the bytes     ARGV[2]  TTL s
keep_blob(KEYS[1], ARGV[1], tonumber(ARGV[2]), true)
return 1
