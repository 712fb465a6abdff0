-- The retention pass forgets notification ids older than COINSTREAM_NOTIFICATION_RETENTION_DAYS by received_at.
CREATE INDEX rail_notifications_received_at ON rail_notifications (received_at);
