-- Tier changes copy while the tenant writes (docs/tier-changes.md, "Online moves"). Their
-- steps went from
--   preflight 0, create_target 1, fence 2, copy 3, verify 4, switch 5, unfence 6, cleanup 7
-- to
--   preflight 0, create_target 1, capture 2, copy 3, catch_up 4, fence 5, tail 6, verify 7,
--   switch 8, unfence 9, cleanup 10.
-- A step's index is part of the stored format (docs/workflows.md), so operations stored with
-- the eight steps are renumbered here. Their state has no `online`, so they go on as fenced
-- moves, in which `tail` does the copy: the old `copy` step becomes `tail`, and the three new
-- steps are recorded done when the operation is already past them (they do nothing for a
-- fenced move) and pending otherwise.

CREATE TEMPORARY TABLE change_tier_v1 ON COMMIT DROP AS
SELECT o.id, o.next_step FROM operations o
WHERE o.kind = 'change_tier'
  AND NOT EXISTS (SELECT 1 FROM operation_steps s
                  WHERE s.operation_id = o.id AND s.name = 'catch_up');

UPDATE operation_steps SET idx = idx + 1000
WHERE operation_id IN (SELECT id FROM change_tier_v1);

UPDATE operation_steps
SET idx = CASE WHEN idx - 1000 >= 2 THEN idx - 1000 + 3 ELSE idx - 1000 END,
    name = CASE WHEN name = 'copy' THEN 'tail' ELSE name END
WHERE operation_id IN (SELECT id FROM change_tier_v1) AND idx >= 1000;

INSERT INTO operation_steps (operation_id, idx, name, state)
SELECT v.id, n.idx, n.name, CASE WHEN v.next_step >= 2 THEN 'done' ELSE 'pending' END
FROM change_tier_v1 v
CROSS JOIN (VALUES (2, 'capture'), (3, 'copy'), (4, 'catch_up')) AS n (idx, name);

UPDATE operations o SET next_step = o.next_step + 3
FROM change_tier_v1 v
WHERE o.id = v.id AND v.next_step >= 2;
