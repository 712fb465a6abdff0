-- The retention pass forgets notification ids older than COINSTREAM_NOTIFICATION_RETENTION_DAYS by received_at.
CREATE INDEX payout_notifications_received_at ON payout_notifications (received_at);
