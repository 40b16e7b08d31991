-- Per-item progress of a step (e.g. rows copied per table during a tier change), shown by
-- WatchOperation: a JSON array of {"name", "done", "total"}. progress_done/progress_total
-- stay the step's totals.
ALTER TABLE operation_steps ADD COLUMN progress_items jsonb NOT NULL DEFAULT '[]'::jsonb;
