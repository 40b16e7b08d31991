-- Physical base backups through pgBackRest (docs/pitr.md): one row per (cluster, slot) of
-- the [pitr] schedule. Every replica runs the schedule; the one whose insert wins takes
-- the backup, so a slot is backed up once however many replicas see it due.
CREATE TABLE base_backups (
    cluster     text NOT NULL,
    slot        timestamptz NOT NULL,
    started_by  text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (cluster, slot)
);
