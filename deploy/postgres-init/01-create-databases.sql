-- Run once by the official postgres image when its data volume is empty (docker-entrypoint-initdb.d).
-- One database per service: no service reads another's tables.
CREATE DATABASE coinstream_wallet;
CREATE DATABASE coinstream_gifts;
CREATE DATABASE coinstream_payouts;
