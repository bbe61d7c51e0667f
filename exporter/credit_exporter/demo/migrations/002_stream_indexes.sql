-- Indexes the exporter's queries rely on.
--
-- Every usage event stream reads "rows at or after the horizon" by its time
-- column on each poll; without an index on that column each poll would scan
-- the whole table (cost growing with history instead of with new rows).
CREATE INDEX IF NOT EXISTS visitors_first_seen_at ON visitors (first_seen_at);
CREATE INDEX IF NOT EXISTS feedback_created_at ON feedback (created_at);
CREATE INDEX IF NOT EXISTS paid_agent_transactions_occurred_at
    ON paid_agent_transactions (occurred_at);
CREATE INDEX IF NOT EXISTS topups_occurred_at ON topups (occurred_at);

-- State queries that count "right now" rows of growing tables.
CREATE INDEX IF NOT EXISTS conversations_calls_in_progress
    ON conversations (organization_id) WHERE type = 'call' AND ended_at IS NULL;
CREATE INDEX IF NOT EXISTS paid_agent_subscriptions_active
    ON paid_agent_subscriptions (agent_id) WHERE cancelled_at IS NULL;
