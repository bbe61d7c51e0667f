-- Alert ladders of budgets: the share of a budget's limit at which each alert
-- level (usage_high, almost_exhausted, exhausted) fires, for customers who want
-- other levels than the monitoring's defaults (75/90/100 %), e.g. a cautious one
-- at 50/80/100.
--
-- A row with budget_id NULL is the organization's ladder, for every budget of
-- the organization; a row with a budget_id is that budget's own ladder and
-- wins over the organization's, level by level. A level without a row takes
-- the next one in that order, then the monitoring's default. organization_id
-- is on every row (the tenancy column), and a budget's row must name the
-- budget's own organization (the composite foreign key).
--
-- Thresholds are in percent of the limit; more than 100 is allowed (alert only
-- once a budget is overspent by that much). The alert rules make the effective
-- ladder of a budget non-decreasing (docs/alerts.md, "Threshold ladders").
ALTER TABLE budgets ADD CONSTRAINT budgets_id_organization_id_key UNIQUE (id, organization_id);

CREATE TABLE budget_alert_levels (
    organization_id   integer NOT NULL REFERENCES organizations (id),
    budget_id         integer,
    level             text NOT NULL
                          CHECK (level IN ('usage_high', 'almost_exhausted', 'exhausted')),
    threshold_percent numeric(7, 3) NOT NULL
                          CHECK (threshold_percent > 0 AND threshold_percent <= 1000),
    FOREIGN KEY (budget_id, organization_id)
        REFERENCES budgets (id, organization_id) ON DELETE CASCADE
);

-- One threshold per level of a ladder (a plain UNIQUE would let NULL budget_ids repeat).
CREATE UNIQUE INDEX budget_alert_levels_organization_level
    ON budget_alert_levels (organization_id, level) WHERE budget_id IS NULL;
CREATE UNIQUE INDEX budget_alert_levels_budget_level
    ON budget_alert_levels (budget_id, level) WHERE budget_id IS NOT NULL;
