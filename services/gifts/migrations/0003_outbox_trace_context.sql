-- Traces: each outbox row keeps the W3C traceparent of the span that queued it (the SendGift or EndLiveStream
-- call), so that the relay — another task, maybe another process after a restart — continues that trace when it
-- publishes the event. NULL when tracing was off.
ALTER TABLE gift_outbox ADD COLUMN traceparent text;
