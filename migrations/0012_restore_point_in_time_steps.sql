-- Restores to a point in time (docs/pitr.md) run four steps before the restore's own:
--   preflight 0, fetch_backup 1, replay 2, extract 3,
-- then verify 4 … cleanup 15 (were verify 0 … cleanup 11). A step's index is part of the
-- stored format (docs/workflows.md), so restores stored with the twelve steps are renumbered
-- here, as 0009 did for tier changes. They restore from an export, for which the four new
-- steps do nothing: they are recorded done.

CREATE TEMPORARY TABLE restore_v1 ON COMMIT DROP AS
SELECT o.id FROM operations o
WHERE o.kind = 'restore'
  AND NOT EXISTS (SELECT 1 FROM operation_steps s
                  WHERE s.operation_id = o.id AND s.name = 'preflight');

UPDATE operation_steps SET idx = idx + 1000
WHERE operation_id IN (SELECT id FROM restore_v1);

UPDATE operation_steps SET idx = idx - 1000 + 4
WHERE operation_id IN (SELECT id FROM restore_v1) AND idx >= 1000;

INSERT INTO operation_steps (operation_id, idx, name, state)
SELECT v.id, n.idx, n.name, 'done'
FROM restore_v1 v
CROSS JOIN (VALUES (0, 'preflight'), (1, 'fetch_backup'), (2, 'replay'), (3, 'extract'))
  AS n (idx, name);

UPDATE operations o SET next_step = o.next_step + 4
FROM restore_v1 v
WHERE o.id = v.id;
