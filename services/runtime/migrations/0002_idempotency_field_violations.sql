-- A stored INVALID_ARGUMENT must replay with its field violations, not just its code and message.
ALTER TABLE idempotency_keys ADD COLUMN error_field_violations jsonb;
