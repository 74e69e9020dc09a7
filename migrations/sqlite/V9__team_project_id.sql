-- The project a team belongs to. PostHog's `posthog_team.project_id` need not equal the team's
-- id; a team hoglet creates is its own project, stored as NULL and read as the team's id
-- (`COALESCE(project_id, id)`), so no insert has to know its own id first. A team imported from
-- PostHog keeps PostHog's value.
ALTER TABLE teams ADD COLUMN project_id BIGINT;
