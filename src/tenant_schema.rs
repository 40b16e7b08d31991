//! The tenant schema as its owner supplies it: a directory of `NNNN_name.sql` migrations, each
//! with an optional `NNNN_name.seed.sql` of reference rows that a new container gets. The
//! directory is the user's (`[tenant_schema] dir`, `tenantd dev --tenant-schema DIR`); the
//! example that ships in the repository (`examples/healthcare/`) is built in as the default.
//!
//! Invariants:
//! - versions are dense from 1 and a version's text never changes: the registry keeps every
//!   version's exact text and sha256 (`Registry::adopt_tenant_schema`), a replica whose file
//!   disagrees refuses to start, and every replica and rollout applies the registry's bytes;
//! - a new version is a new file, applied to the fleet by a rollout (`MigrateFleet`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

/// One version of the tenant schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: String,
    pub sql: String,
    /// Reference rows a new container gets (run with `app.tenant_id` set to its tenant).
    pub seed: Option<String>,
}

impl Migration {
    /// The migration's file name, as the owner knows it.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }

    pub fn sha256(&self) -> String {
        sha256(&self.sql)
    }

    pub fn seed_sha256(&self) -> Option<String> {
        self.seed.as_deref().map(sha256)
    }
}

pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("tenant schema: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tenant schema: {0} is not a migration: name files NNNN_name.sql or NNNN_name.seed.sql \
         (four digits, then lowercase letters, digits and _)"
    )]
    BadName(PathBuf),
    #[error("tenant schema: {0}")]
    Invalid(String),
}

/// Every version of a tenant schema, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSchema {
    migrations: Vec<Migration>,
}

/// The example schema that ships in the repository, byte for byte.
const EXAMPLE: &[(&str, &str, Option<&str>)] = &[
    (
        "0001_healthcare_core.sql",
        include_str!("../examples/healthcare/0001_healthcare_core.sql"),
        Some(include_str!(
            "../examples/healthcare/0001_healthcare_core.seed.sql"
        )),
    ),
    (
        "0002_write_fence.sql",
        include_str!("../examples/healthcare/0002_write_fence.sql"),
        None,
    ),
    (
        "0003_foreign_key_indexes.sql",
        include_str!("../examples/healthcare/0003_foreign_key_indexes.sql"),
        None,
    ),
    (
        "0004_patient_preferred_language.sql",
        include_str!("../examples/healthcare/0004_patient_preferred_language.sql"),
        None,
    ),
];

impl TenantSchema {
    /// The example that ships in `examples/healthcare/` (the default of `tenantd dev`).
    pub fn example() -> Self {
        let files = EXAMPLE.iter().map(|(file, sql, seed)| {
            let (version, name) = parse_name(file, ".sql").expect("example names are valid");
            Migration {
                version,
                name,
                sql: (*sql).to_owned(),
                seed: seed.map(str::to_owned),
            }
        });
        Self::new(files.collect()).expect("the example is dense")
    }

    /// Reads `dir`: every `NNNN_name.sql` and its `NNNN_name.seed.sql`. Other files (a README)
    /// are left alone; a `.sql` file with another name is refused.
    pub fn from_dir(dir: &Path) -> Result<Self, SchemaError> {
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| SchemaError::Read { path, source }
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err(dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read_err(dir))?;
        files.sort();
        let mut migrations: Vec<Migration> = Vec::new();
        let mut seeds = Vec::new();
        for path in files {
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if !file.ends_with(".sql") {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            if let Some((version, name)) = parse_name(file, ".seed.sql") {
                seeds.push((version, name, text, path));
            } else if let Some((version, name)) = parse_name(file, ".sql") {
                migrations.push(Migration {
                    version,
                    name,
                    sql: text,
                    seed: None,
                });
            } else {
                return Err(SchemaError::BadName(path));
            }
        }
        for (version, name, text, path) in seeds {
            let m = migrations
                .iter_mut()
                .find(|m| m.version == version && m.name == name)
                .ok_or_else(|| {
                    SchemaError::Invalid(format!(
                        "{} has no migration {version:04}_{name}.sql",
                        path.display()
                    ))
                })?;
            m.seed = Some(text);
        }
        Self::new(migrations).map_err(|e| SchemaError::Invalid(format!("{}: {e}", dir.display())))
    }

    /// Versions must run 1, 2, 3… with no gap and no version twice.
    pub fn new(mut migrations: Vec<Migration>) -> Result<Self, String> {
        migrations.sort_by_key(|m| m.version);
        if migrations.is_empty() {
            return Err("no migrations (NNNN_name.sql files)".into());
        }
        for (i, m) in migrations.iter().enumerate() {
            let expected = i as i32 + 1;
            if m.version != expected {
                return Err(format!(
                    "versions must run 1, 2, 3… without gaps or repeats: found {} where {expected:04} belongs",
                    m.file_name()
                ));
            }
        }
        Ok(TenantSchema { migrations })
    }

    /// The newest version.
    pub fn latest(&self) -> i32 {
        self.migrations.len() as i32
    }

    pub fn get(&self, version: i32) -> Option<&Migration> {
        usize::try_from(version - 1)
            .ok()
            .and_then(|i| self.migrations.get(i))
    }

    pub fn migrations(&self) -> &[Migration] {
        &self.migrations
    }
}

/// The tenant schema a process migrates with, shared by the data plane's clusters. It only
/// grows: another replica may record a newer version after this one started, and
/// `Context::tenant_schema` then reloads the registry's versions into it.
#[derive(Debug, Clone)]
pub struct SchemaHandle(Arc<RwLock<Arc<TenantSchema>>>);

impl SchemaHandle {
    pub fn new(schema: TenantSchema) -> Self {
        SchemaHandle(Arc::new(RwLock::new(Arc::new(schema))))
    }

    pub fn current(&self) -> Arc<TenantSchema> {
        self.0.read().expect("tenant schema lock").clone()
    }

    /// Takes `schema` if it knows more versions than the current one (never fewer).
    pub fn grow(&self, schema: TenantSchema) {
        let mut current = self.0.write().expect("tenant schema lock");
        if schema.latest() > current.latest() {
            *current = Arc::new(schema);
        }
    }
}

/// `NNNN_name{suffix}` → (NNNN, name).
fn parse_name(file: &str, suffix: &str) -> Option<(i32, String)> {
    let stem = file.strip_suffix(suffix)?;
    let (digits, name) = stem.split_at_checked(4)?;
    let name = name.strip_prefix('_')?;
    let valid = digits.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 48
        && !name.contains('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return None;
    }
    Some((digits.parse().ok()?, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, text) in files {
            std::fs::write(d.path().join(name), text).unwrap();
        }
        d
    }

    /// A throwaway directory for one test.
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p =
                    std::env::temp_dir().join(format!("tenantd-schema-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn the_shipped_directory_is_the_built_in_example() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/healthcare");
        assert_eq!(
            TenantSchema::from_dir(Path::new(dir)).unwrap(),
            TenantSchema::example()
        );
        let example = TenantSchema::example();
        assert_eq!(example.latest(), 4);
        assert!(example.get(1).unwrap().seed.is_some());
        assert_eq!(example.get(2).unwrap().file_name(), "0002_write_fence.sql");
    }

    #[test]
    fn reads_migrations_and_seeds_and_leaves_other_files_alone() {
        let d = dir(&[
            ("0001_core.sql", "CREATE TABLE a (tenant_id uuid NOT NULL);"),
            (
                "0001_core.seed.sql",
                "INSERT INTO a VALUES (current_setting('app.tenant_id')::uuid);",
            ),
            ("0002_more.sql", "ALTER TABLE a ADD COLUMN b int;"),
            ("README.md", "notes"),
        ]);
        let s = TenantSchema::from_dir(d.path()).unwrap();
        assert_eq!(s.latest(), 2);
        assert_eq!(s.get(1).unwrap().name, "core");
        assert!(s.get(1).unwrap().seed.is_some());
        assert!(s.get(2).unwrap().seed.is_none());
        assert_eq!(s.get(3), None);
        assert_eq!(s.get(0), None);
    }

    #[test]
    fn refuses_gaps_repeats_bad_names_and_orphan_seeds() {
        let refused = |files: &[(&str, &str)], why: &str| {
            let d = dir(files);
            let e = TenantSchema::from_dir(d.path()).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        refused(
            &[("0001_a.sql", ""), ("0003_c.sql", "")],
            "0003_c.sql where 0002 belongs",
        );
        refused(
            &[("0001_a.sql", ""), ("0001_b.sql", "")],
            "without gaps or repeats",
        );
        refused(&[("1_a.sql", "")], "1_a.sql is not a migration");
        refused(&[("0001_A.sql", "")], "is not a migration");
        refused(
            &[("0001_a.sql", ""), ("0002_b.seed.sql", "")],
            "has no migration 0002_b.sql",
        );
        refused(&[("README.md", "")], "no migrations");
    }

    #[test]
    fn every_table_is_created_with_rls() {
        let schema = TenantSchema::example();
        let sql = &schema.get(1).unwrap().sql;
        for t in [
            "patients",
            "appointment_types",
            "encounters",
            "observations",
            "clinical_notes",
            "appointments",
            "audit_events",
        ] {
            assert!(sql.contains(&format!("CREATE TABLE {t} (")), "{t}");
            assert!(sql.contains(&format!("'{t}'")), "{t} gets a policy");
        }
    }
}
