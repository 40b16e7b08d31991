//! The deployment files in `deploy/` parse and say what docs/operations.md promises: two or
//! more replicas, gRPC health probes, a disruption budget, and no secret written inline. The
//! configurations they carry are valid tenantd configurations.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use tenantd::config::Config;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Kubernetes document under deploy/kubernetes, by kind.
fn manifests() -> Vec<(String, Value)> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let doc: Value = serde_norway::from_str(&read(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            docs.push((name, doc));
        }
    }
    docs
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_str()
        .unwrap_or_else(|| panic!("{} is not a string", path.join(".")))
}

fn of_kind<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|(_, d)| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    &found[0].1
}

/// A value that carries a credential: a URL with a password, a private key, a token.
fn looks_secret(s: &str) -> bool {
    let url_password = s.split("://").nth(1).is_some_and(|rest| {
        let userinfo = rest.split('@').next().unwrap_or("");
        rest.contains('@') && userinfo.contains(':')
    });
    url_password || s.contains("PRIVATE KEY") || s.contains(tenantd::auth::TOKEN_PREFIX)
}

#[test]
fn kubernetes_manifests_run_two_replicas_with_probes_and_no_inline_secrets() {
    let docs = manifests();
    for (file, d) in &docs {
        assert!(!str_at(d, &["apiVersion"]).is_empty(), "{file}");
        assert!(!str_at(d, &["kind"]).is_empty(), "{file}");
        if d["kind"] != "Kustomization" {
            assert_eq!(str_at(d, &["metadata", "name"]), "tenantd", "{file}");
        }
    }
    // The kustomization applies every manifest, and only those.
    let listed: BTreeSet<String> = of_kind(&docs, "Kustomization")["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| f.clone())
        .collect();
    assert_eq!(listed, files);

    let deployment = of_kind(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2, "2+ replicas");
    let labels = &spec["template"]["metadata"]["labels"];
    let selector = &spec["selector"]["matchLabels"];
    for (k, v) in selector.as_mapping().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v, "selector matches the pods");
    }
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let image = str_at(c, &["image"]);
    assert!(
        image.contains(':') && !image.ends_with(":latest"),
        "pinned image: {image}"
    );
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(port, 50051);
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(
            c[probe]["grpc"]["port"].as_u64(),
            Some(port),
            "{probe} asks gRPC health on the serving port"
        );
    }
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);

    // No secret inline: env values are plain, secrets come by reference.
    let mut from_secrets = BTreeSet::new();
    for e in c["env"].as_sequence().unwrap() {
        let name = str_at(e, &["name"]);
        match e["value"].as_str() {
            Some(v) => assert!(!looks_secret(v), "{name} is inline: {v}"),
            None => {
                assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{name}");
                from_secrets.insert(name.to_owned());
            }
        }
    }
    // The PostgreSQL servers' CA is mounted where the URLs' sslrootcert points.
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&"/etc/tenantd/postgres"), "{mounts:?}");
    let configmap = of_kind(&docs, "ConfigMap");
    let toml = str_at(configmap, &["data", "tenantd.toml"]);
    assert!(!looks_secret(toml), "the ConfigMap holds a secret");

    // The ConfigMap is a valid configuration once the Secret's variables are set, and it
    // names no variable the Deployment does not provide.
    let config = Config::parse(toml, &|name| {
        from_secrets
            .contains(name)
            .then(|| format!("postgres://tenantd:secret@{}/db", name.to_lowercase()))
    })
    .unwrap();
    config.validate().unwrap();
    assert!(config.tls.is_some(), "TLS in production");
    assert_eq!(config.listen.port() as u64, port);

    // The Service and the disruption budget select the Deployment's pods.
    let service = of_kind(&docs, "Service");
    assert_eq!(&service["spec"]["selector"], selector);
    assert_eq!(
        str_at(&service["spec"]["ports"][0], &["targetPort"]),
        "grpc"
    );
    let pdb = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < spec["replicas"].as_u64().unwrap());
}

#[test]
fn the_compose_stack_and_its_configuration_agree() {
    let compose: Value = serde_norway::from_str(&read(&deploy("compose.yaml"))).unwrap();
    let services = compose["services"].as_mapping().unwrap();
    for needed in ["postgres", "aws", "bucket", "tenantd"] {
        assert!(services.contains_key(needed), "service {needed}");
    }
    let tenantd = &compose["services"]["tenantd"];
    assert_eq!(
        str_at(tenantd, &["build", "dockerfile"]),
        "deploy/Dockerfile"
    );
    let env = tenantd["environment"].as_mapping().unwrap();
    let config = Config::parse(&read(&deploy("compose/tenantd.toml")), &|name| {
        env.get(name).and_then(|v| v.as_str()).map(str::to_owned)
    })
    .unwrap();
    config.validate().unwrap();
    // The token the file's comment gives is the one it lists.
    assert_eq!(
        config.auth.tokens[0].sha256,
        tenantd::auth::token_hash("tdt_local-compose-admin-token")
    );
}

#[test]
fn the_dockerfile_builds_every_target_cargo_knows() {
    let dockerfile = read(&deploy("Dockerfile"));
    assert!(dockerfile.contains(" AS build"));
    let last = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(last.contains("USER 10001"), "the image runs unprivileged");
    assert!(last.contains("EXPOSE 50051"));
    // The dependency-caching stage stubs every bench Cargo.toml names, or cargo refuses to
    // build; a new bench must be added there too.
    let manifest: toml::Value = toml::from_str(&read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
    ))
    .unwrap();
    let stubbed = dockerfile
        .split("for b in ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap();
    for bench in manifest["bench"].as_array().unwrap() {
        let name = bench["name"].as_str().unwrap();
        assert!(
            stubbed.split_whitespace().any(|b| b == name),
            "bench {name} is not stubbed in deploy/Dockerfile"
        );
    }
    // Every file the sources embed (include_str!, e.g. the example tenant schema) is copied
    // into the build stage, or the release build fails in the image only.
    let build = dockerfile
        .split("\nFROM ")
        .find(|s| s.contains(" AS build"))
        .unwrap();
    let copied: Vec<&str> = build
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("src")];
    while let Some(dir) = sources.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources.push(path);
                continue;
            }
            let text = read(&path);
            // Unit tests are not built into the image.
            let built = text.split("#[cfg(test)]").next().unwrap();
            for embedded in built.split("include_str!(").skip(1) {
                let literal = embedded.trim_start().trim_start_matches('"');
                let relative = literal.split('"').next().unwrap();
                let file = path.parent().unwrap().join(relative);
                let file = file.canonicalize().unwrap();
                let top = file
                    .strip_prefix(root.canonicalize().unwrap())
                    .unwrap()
                    .components()
                    .next()
                    .unwrap();
                let top = top.as_os_str().to_str().unwrap();
                assert!(
                    copied.contains(&top),
                    "{} embeds {relative}, but deploy/Dockerfile does not COPY {top}",
                    path.display()
                );
            }
        }
    }
}
