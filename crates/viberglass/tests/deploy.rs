//! The Kubernetes manifests (`deploy/kubernetes/`): every overlay renders with the real `kubectl kustomize`
//! (offline), and every rendered object is a valid Kubernetes object: it deserializes into its `k8s-openapi`
//! type, and nothing in it is a field that type does not know (a typo kubectl would pass on to the API
//! server, which would drop or refuse it). The Role grants exactly what the Kubernetes compute target uses.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kubectl kustomize <dir>`, parsed into one JSON value per object.
fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("kubectl is needed (scripts/test installs it): {e}"))?;
    if !output.status.success() {
        return Err(format!("kubectl kustomize {} failed: {}", dir.display(), String::from_utf8_lossy(&output.stderr)));
    }
    let yaml = String::from_utf8_lossy(&output.stdout);
    serde_saphyr::from_multiple::<Value>(&yaml).map_err(|e| format!("the rendered YAML does not parse: {e}"))
}

/// Fields of `original` that the typed round trip lost: ones its type does not have.
fn unknown_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => unknown_fields(value, other, &here, out),
                    None if !value.is_null() => out.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Checks one object against its Kubernetes type; the problems found.
fn check(object: &Value) -> Vec<String> {
    // A Secret's base64 comes wrapped in lines from kustomize; the API server's decoder skips line breaks.
    let mut object = object.clone();
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        for value in data.values_mut() {
            if let Some(text) = value.as_str() {
                *value = Value::String(text.chars().filter(|c| !matches!(c, '\n' | '\r')).collect());
            }
        }
    }
    let object = &object;
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = format!("{kind} {}", object["metadata"]["name"].as_str().unwrap_or("?"));
    let typed = match (api, kind) {
        ("apps/v1", "Deployment") => round_trip::<Deployment>(object),
        ("v1", "Service") => round_trip::<Service>(object),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(object),
        ("v1", "Secret") => round_trip::<Secret>(object),
        ("v1", "Namespace") => round_trip::<Namespace>(object),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(object),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(object),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(object),
        ("networking.k8s.io/v1", "Ingress") => round_trip::<Ingress>(object),
        _ => Err(format!("{api} {kind} is not a type this check knows: add it")),
    };
    match typed {
        Err(e) => vec![format!("{name}: {e}")],
        Ok(typed) => {
            let mut unknown = Vec::new();
            unknown_fields(object, &typed, "", &mut unknown);
            unknown.into_iter().map(|f| format!("{name}: unknown field {f}")).collect()
        }
    }
}

fn overlay(name: &str) -> Vec<Value> {
    let objects = render(&root().join("deploy/kubernetes/overlays").join(name)).unwrap();
    let problems: Vec<String> = objects.iter().flat_map(check).collect();
    assert!(problems.is_empty(), "overlay {name}:\n{}", problems.join("\n"));
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn env<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in the server's environment"))
}

#[test]
fn every_overlay_renders_into_valid_kubernetes_objects() {
    for name in ["development", "production"] {
        let objects = overlay(name);
        let deployment = find(&objects, "Deployment");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert!(container["resources"]["requests"]["cpu"].is_string(), "{name}: resource requests");
        for (variable, key) in [("DATABASE_URL", "database-url"), ("SECRETS_ENCRYPTION_KEY", "encryption-key")] {
            let from = &env(deployment, variable)["valueFrom"]["secretKeyRef"];
            assert_eq!((from["name"].as_str(), from["key"].as_str()), (Some("viberglass"), Some(key)), "{name}");
        }
        assert_eq!(deployment["spec"]["template"]["spec"]["serviceAccountName"], "viberglass");
        // The Service and the PodDisruptionBudget select the Deployment's pods.
        let labels = deployment["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
        for selector in [
            &find(&objects, "Service")["spec"]["selector"],
            &find(&objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        ] {
            for (k, v) in selector.as_object().unwrap() {
                assert_eq!(labels.get(k), Some(v), "{name}: selector {k}");
            }
        }
        let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
        assert!(objects.iter().all(|o| o["kind"] == "Namespace" || o["metadata"]["namespace"] == namespace));
    }
    let production = overlay("production");
    assert_eq!(find(&production, "Deployment")["spec"]["replicas"], 3);
    assert_eq!(
        env(find(&production, "Deployment"), "VIBERGLASS_PUBLIC_URL")["value"],
        "https://viberglass.example.com"
    );
    assert_eq!(
        find(&production, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "viberglass"
    );
    assert!(
        production.iter().all(|o| o["kind"] != "Secret"),
        "production's Secret is made beforehand, never committed"
    );
    let development = overlay("development");
    assert_eq!(find(&development, "Deployment")["spec"]["replicas"], 1);
    assert_eq!(find(&development, "Secret")["metadata"]["name"], "viberglass");
}

#[test]
fn the_role_grants_exactly_what_the_kubernetes_target_uses() {
    let objects = overlay("production");
    let mut granted: Vec<(String, String, String)> = find(&objects, "Role")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect()
            };
            let (groups, resources, verbs) =
                (strings(&rule["apiGroups"]), strings(&rule["resources"]), strings(&rule["verbs"]));
            let mut out = Vec::new();
            for g in &groups {
                for r in &resources {
                    for v in &verbs {
                        out.push((g.clone(), r.clone(), v.clone()));
                    }
                }
            }
            out
        })
        .collect();
    let mut needed: Vec<(String, String, String)> = viberglass_compute::required_permissions()
        .into_iter()
        .map(|(g, r, v)| (g.to_owned(), r, v.to_owned()))
        .collect();
    granted.sort();
    needed.sort();
    assert_eq!(granted, needed, "the Role grants only, and all of, what crates/compute/src/kubernetes.rs uses");
    let binding = find(&objects, "RoleBinding");
    assert_eq!(binding["roleRef"]["name"], find(&objects, "Role")["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], "viberglass");
}

#[test]
fn a_broken_manifest_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kustomization.yaml"), "resources: [deployment.yaml]\n").unwrap();
    // `replica` for `replicas`, and a container field that does not exist: kubectl renders both without a word.
    std::fs::write(
        dir.path().join("deployment.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  replica: 3\n  selector:\n    \
         matchLabels: {app: x}\n  template:\n    metadata:\n      labels: {app: x}\n    spec:\n      containers:\n        \
         - name: x\n          image: x\n          imagePullPolicyy: Always\n",
    )
    .unwrap();
    let objects = render(dir.path()).unwrap();
    let problems = check(&objects[0]);
    assert!(problems.iter().any(|p| p.ends_with("unknown field .spec.replica")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.ends_with("unknown field .spec.template.spec.containers[0].imagePullPolicyy")),
        "{problems:?}"
    );
    // A wrong type is caught by the deserialization itself.
    let mut wrong = objects[0].clone();
    wrong["spec"]["replicas"] = Value::String("three".into());
    assert!(check(&wrong).iter().any(|p| p.contains("invalid type")), "{:?}", check(&wrong));
    // And a kind nobody checks is said so.
    let unknown = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    assert!(check(&unknown)[0].contains("not a type this check knows"));
}
