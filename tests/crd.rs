//! The committed CRD is exactly what `imagegate crd` prints, and it describes the API of
//! DESIGN §2.

use std::process::Command;

use imagegate::cli::crd::crd_yaml;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

const COMMITTED: &str = include_str!("../crds/imagepolicy.yaml");

#[test]
fn committed_crd_matches_generated() {
    assert!(
        COMMITTED == crd_yaml(),
        "crds/imagepolicy.yaml is out of date: run `cargo run -q -- crd > crds/imagepolicy.yaml`"
    );
}

#[test]
fn crd_command_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_imagegate"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), COMMITTED);
}

#[test]
fn crd_describes_the_api() {
    let crd: CustomResourceDefinition = serde_saphyr::from_str(COMMITTED).unwrap();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("imagepolicies.imagegate.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["imgpol".to_owned()][..])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(columns, ["Mode", "Ready", "Violations", "Age"]);
    let violations = version
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Violations")
        .unwrap();
    assert_eq!(
        (violations.json_path.as_str(), violations.type_.as_str()),
        (".status.audit.violatingPods", "integer")
    );

    // Every field of the spec is documented, so `kubectl explain imagepolicy.spec` explains it.
    let schema = serde_json::to_value(version.schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
    let mut undocumented = Vec::new();
    collect_undocumented("spec", spec, &mut undocumented);
    assert!(
        undocumented.is_empty(),
        "fields without description: {undocumented:?}"
    );
    for field in [
        "mode",
        "namespaceSelector",
        "images",
        "allowedImages",
        "deniedImages",
        "requireDigest",
        "deniedTags",
        "requirePullPolicyAlways",
        "setPullPolicyAlways",
        "pinDigests",
        "breakGlass",
        "verifySignatures",
    ] {
        assert!(
            spec["properties"].get(field).is_some(),
            "spec.{field} missing"
        );
    }
    assert_eq!(
        spec["properties"]["mode"]["enum"],
        serde_json::json!(["Enforce", "Warn", "Audit"])
    );
    assert_eq!(spec["properties"]["allowedImages"]["minItems"], 1);
    assert!(
        spec["x-kubernetes-validations"].is_array(),
        "the spec carries a CEL rule"
    );
    assert!(
        spec["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap()
            .contains("self.verifySignatures"),
        "a policy with only signature entries sets a rule"
    );

    // verifySignatures: unique names, one of key/keyless, one of publicKey/secretRef.
    let signatures = &spec["properties"]["verifySignatures"];
    let rules = |schema: &serde_json::Value| -> Vec<String> {
        schema["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        rules(signatures),
        ["self.all(a, self.exists_one(b, b.name == a.name))"]
    );
    let entry = &signatures["items"];
    assert_eq!(rules(entry), ["has(self.key) != has(self.keyless)"]);
    assert_eq!(entry["required"], serde_json::json!(["name"]));
    assert_eq!(entry["properties"]["name"]["pattern"], "^[a-z0-9-]{1,63}$");
    assert_eq!(
        rules(&entry["properties"]["key"]),
        ["has(self.publicKey) != has(self.secretRef)"]
    );
    assert_eq!(
        rules(&entry["properties"]["keyless"]),
        [
            "has(self.issuer) != has(self.issuerRegExp)",
            "has(self.subject) != has(self.subjectRegExp)"
        ]
    );
    assert_eq!(
        entry["properties"]["transparencyLog"]["enum"],
        serde_json::json!(["Skip", "Require"])
    );
    // A mutation field alone is a rule: the "set at least one rule" check names both.
    let rules = spec["x-kubernetes-validations"].to_string();
    for field in ["setPullPolicyAlways", "pinDigests"] {
        assert!(
            rules.contains(&format!("has(self.{field})")),
            "{field} missing from {rules}"
        );
    }
}

fn collect_undocumented(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (name, child) in props {
        let here = format!("{path}.{name}");
        if child.get("description").is_none() {
            out.push(here.clone());
        }
        // Kubernetes' own LabelSelector fields are documented upstream; only check ours.
        if name != "namespaceSelector" {
            collect_undocumented(&here, child, out);
            if let Some(items) = child.get("items") {
                collect_undocumented(&here, items, out);
            }
        }
    }
}
