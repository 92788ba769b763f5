//! Rekor transparency-log entries: that the log holds an entry (its signed entry timestamp,
//! or an inclusion proof up to a signed checkpoint, verified with the log's key from the
//! trusted root), and that the entry is the entry of *this* signature — the same signature
//! bytes, by the same certificate or key, over the same content. A valid entry of another
//! signature proves nothing about this one.
//!
//! Only a verified signed entry timestamp proves *when* the entry was made: the checkpoint of
//! an inclusion proof signs the tree, not the entry's integrated time.

use base64::Engine as _;
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use super::trust::{TrustedRoot, time};
use super::{PublicKey, hex, pem_blocks};

/// The most hashes an inclusion proof may hold: a tree of 2^64 entries needs 64.
pub const MAX_PROOF_HASHES: usize = 64;
/// The longest checkpoint (signed note) read: a real one is a few hundred bytes.
pub const MAX_CHECKPOINT_LEN: usize = 16 * 1024;

/// One transparency-log entry as a signature carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogEntry {
    pub log_index: i64,
    /// The log's id: SHA-256 of its key's DER.
    pub log_id: Vec<u8>,
    /// When the log integrated the entry (Unix seconds); proven only by the signed entry timestamp.
    pub integrated_time: i64,
    /// The entry as the log stores it (canonical JSON).
    pub body: Vec<u8>,
    /// `kind` and `version` as the carrier states them, checked against the body.
    pub kind_version: Option<(String, String)>,
    pub signed_entry_timestamp: Option<Vec<u8>>,
    pub inclusion_proof: Option<InclusionProof>,
}

/// An RFC 6962 inclusion proof with the checkpoint it leads to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InclusionProof {
    pub log_index: i64,
    pub tree_size: i64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: String,
}

/// Who made a signature, as a log entry must name it.
pub(crate) struct Signer<'a> {
    pub key: &'a PublicKey,
    /// The certificate (DER) when the signature came with one: the entry must hold the same.
    pub certificate: Option<&'a [u8]>,
}

/// What a log entry must record about the signed content.
pub(crate) enum Content<'a> {
    /// A signature over a message whose SHA-256 this is (`hashedrekord`).
    Digest(&'a [u8]),
    /// A DSSE envelope's payload and its type (`dsse`, `intoto`).
    Dsse {
        payload: &'a [u8],
        payload_type: &'a str,
    },
}

/// What a verified entry proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proven {
    /// The integrated time, when a signed entry timestamp proves it.
    pub time: Option<i64>,
}

/// Verifies `entry` against the trusted root's logs, and that it records this signature.
pub(crate) fn verify(
    entry: &LogEntry,
    root: &TrustedRoot,
    signature: &[u8],
    signer: &Signer<'_>,
    content: &Content<'_>,
) -> Result<Proven, String> {
    let log = root.log(&entry.log_id).ok_or_else(|| {
        format!(
            "the entry is in a log the trusted root does not hold (log id {})",
            hex(&entry.log_id)
        )
    })?;
    if entry.signed_entry_timestamp.is_none() && entry.inclusion_proof.is_none() {
        return Err(
            "the entry has neither a signed entry timestamp nor an inclusion proof".to_owned(),
        );
    }
    let mut proven = Proven { time: None };
    if let Some(set) = &entry.signed_entry_timestamp {
        if !log.valid.contains(entry.integrated_time) {
            return Err(format!(
                "the log's key was not trusted at the entry's time {} (it is trusted {})",
                time(entry.integrated_time),
                log.valid
            ));
        }
        if !log.key.verify(&set_payload(entry), set) {
            return Err(
                "the entry's signed entry timestamp does not verify under the log's key".to_owned(),
            );
        }
        proven.time = Some(entry.integrated_time);
    }
    if let Some(proof) = &entry.inclusion_proof {
        verify_inclusion(entry, proof, &log.key, &entry.log_id)?;
    }
    matches_signature(entry, signature, signer, content)?;
    Ok(proven)
}

/// What a signed entry timestamp signs: the canonical JSON (RFC 8785) of the entry's body,
/// integrated time, log id and log index. The keys are written in sorted order, the strings
/// are base64 and hex (nothing to escape) and the numbers integers, so serde_json's compact
/// output is exactly the canonical form.
fn set_payload(entry: &LogEntry) -> Vec<u8> {
    #[derive(Serialize)]
    struct Payload {
        body: String,
        #[serde(rename = "integratedTime")]
        integrated_time: i64,
        #[serde(rename = "logID")]
        log_id: String,
        #[serde(rename = "logIndex")]
        log_index: i64,
    }
    serde_json::to_vec(&Payload {
        body: base64::engine::general_purpose::STANDARD.encode(&entry.body),
        integrated_time: entry.integrated_time,
        log_id: hex(&entry.log_id),
        log_index: entry.log_index,
    })
    .unwrap_or_default()
}

/// RFC 6962 hash of a leaf.
fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(&[0]);
    ctx.update(data);
    ctx.finish().as_ref().try_into().unwrap_or([0; 32])
}

/// RFC 6962 hash of an interior node.
fn node_hash(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(&[1]);
    ctx.update(left);
    ctx.update(right);
    ctx.finish().as_ref().try_into().unwrap_or([0; 32])
}

/// The root an inclusion proof leads to (RFC 9162, section 2.1.3.2), or `None` when the proof
/// does not fit the index and size.
pub(crate) fn root_from_proof(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    proof: &[Vec<u8>],
) -> Option<[u8; 32]> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in proof {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

fn verify_inclusion(
    entry: &LogEntry,
    proof: &InclusionProof,
    key: &PublicKey,
    log_id: &[u8],
) -> Result<(), String> {
    if proof.hashes.len() > MAX_PROOF_HASHES {
        return Err(format!(
            "the inclusion proof has {} hashes, more than {MAX_PROOF_HASHES}",
            proof.hashes.len()
        ));
    }
    let (Ok(index), Ok(size)) = (
        u64::try_from(proof.log_index),
        u64::try_from(proof.tree_size),
    ) else {
        return Err("the inclusion proof's index or tree size is negative".to_owned());
    };
    let root = root_from_proof(index, size, leaf_hash(&entry.body), &proof.hashes)
        .ok_or("the inclusion proof does not fit its index and tree size")?;
    if root.as_slice() != proof.root_hash {
        return Err("the inclusion proof does not lead to its root hash".to_owned());
    }
    let checkpoint = Checkpoint::parse(&proof.checkpoint)?;
    if checkpoint.size != size || checkpoint.root != proof.root_hash {
        return Err("the checkpoint is for another tree than the inclusion proof's".to_owned());
    }
    let hint = log_id.get(..4).unwrap_or_default();
    if !checkpoint
        .signatures
        .iter()
        .any(|(h, sig)| h.as_slice() == hint && key.verify(checkpoint.note.as_bytes(), sig))
    {
        return Err("the checkpoint is not signed by the log's key".to_owned());
    }
    Ok(())
}

/// A checkpoint: a signed note (origin, tree size, root hash, other lines; then signature
/// lines `— NAME base64(key hint ‖ signature)`).
struct Checkpoint<'a> {
    /// The signed text: everything up to and including the first line break of the blank line.
    note: &'a str,
    size: u64,
    root: Vec<u8>,
    signatures: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Checkpoint<'a> {
    fn parse(text: &'a str) -> Result<Checkpoint<'a>, String> {
        if text.len() > MAX_CHECKPOINT_LEN {
            return Err(format!(
                "the checkpoint is {} bytes long, more than {MAX_CHECKPOINT_LEN}",
                text.len()
            ));
        }
        let split = text
            .find("\n\n")
            .ok_or("the checkpoint has no signature lines")?;
        let note = &text[..=split];
        let mut lines = note.lines();
        let _origin = lines.next();
        let size = lines
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or("the checkpoint has no tree size")?;
        let root = lines
            .next()
            .and_then(|l| base64::engine::general_purpose::STANDARD.decode(l).ok())
            .ok_or("the checkpoint has no root hash")?;
        let signatures = text[split + 2..]
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("\u{2014} ")?;
                let (_name, b64) = rest.rsplit_once(' ')?;
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                (bytes.len() > 4).then(|| (bytes[..4].to_vec(), bytes[4..].to_vec()))
            })
            .collect();
        Ok(Checkpoint {
            note,
            size,
            root,
            signatures,
        })
    }
}

#[derive(Deserialize)]
struct Body {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    spec: serde_json::Value,
}

fn b64(value: &serde_json::Value) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()
}

/// Whether the entry's body records this signature: its kind, the signature bytes, the
/// certificate or key, and the content's hash.
fn matches_signature(
    entry: &LogEntry,
    signature: &[u8],
    signer: &Signer<'_>,
    content: &Content<'_>,
) -> Result<(), String> {
    let body: Body = serde_json::from_slice(&entry.body)
        .map_err(|e| format!("the entry's body is not a Rekor entry: {e}"))?;
    if let Some((kind, version)) = &entry.kind_version
        && (kind != &body.kind || version != &body.api_version)
    {
        return Err(format!(
            "the entry says it is a {kind} {version} entry, but its body is a {} {}",
            body.kind, body.api_version
        ));
    }
    let spec = &body.spec;
    let sha256_hex = |data: &[u8]| hex(digest(&SHA256, data).as_ref());
    let (logged_signature, logged_signer, hash_ok) =
        match (body.kind.as_str(), body.api_version.as_str(), content) {
            ("hashedrekord", "0.0.1", Content::Digest(d)) => {
                let hash = &spec["data"]["hash"];
                (
                    b64(&spec["signature"]["content"]),
                    b64(&spec["signature"]["publicKey"]["content"]),
                    hash["algorithm"] == "sha256" && hash["value"] == hex(d).as_str(),
                )
            }
            ("dsse", "0.0.1", Content::Dsse { payload, .. }) => {
                let signatures = spec["signatures"].as_array();
                let [one] = signatures.map(Vec::as_slice).unwrap_or_default() else {
                    return Err("the dsse entry does not hold exactly one signature".to_owned());
                };
                let hash = &spec["payloadHash"];
                (
                    b64(&one["signature"]),
                    b64(&one["verifier"]),
                    hash["algorithm"] == "sha256" && hash["value"] == sha256_hex(payload).as_str(),
                )
            }
            (
                "intoto",
                "0.0.2",
                Content::Dsse {
                    payload,
                    payload_type,
                },
            ) => {
                let envelope = &spec["content"]["envelope"];
                let signatures = envelope["signatures"].as_array();
                let [one] = signatures.map(Vec::as_slice).unwrap_or_default() else {
                    return Err("the intoto entry does not hold exactly one signature".to_owned());
                };
                // intoto entries hold the signature base64 twice over.
                let sig = b64(&one["sig"])
                    .and_then(|inner| String::from_utf8(inner).ok())
                    .and_then(|inner| b64(&serde_json::Value::String(inner)));
                let hash = &spec["content"]["payloadHash"];
                (
                    sig,
                    b64(&one["publicKey"]),
                    envelope["payloadType"] == *payload_type
                        && hash["algorithm"] == "sha256"
                        && hash["value"] == sha256_hex(payload).as_str(),
                )
            }
            ("hashedrekord", version, Content::Digest(_)) => {
                return Err(format!(
                    "a hashedrekord {version} entry, which is not read (0.0.1 is)"
                ));
            }
            (kind, version, _) => {
                return Err(format!(
                    "a {kind} {version} entry, which does not record a signature of this kind"
                ));
            }
        };
    if logged_signature.as_deref() != Some(signature) {
        return Err("the entry records another signature".to_owned());
    }
    if !logged_signer.is_some_and(|pem| same_signer(&pem, signer)) {
        return Err("the entry records another certificate or key".to_owned());
    }
    if !hash_ok {
        return Err("the entry records other signed content".to_owned());
    }
    Ok(())
}

/// Whether the PEM an entry records is this signer: the same certificate, or — for a key —
/// that key, alone or in a certificate.
fn same_signer(pem: &[u8], signer: &Signer<'_>) -> bool {
    let Ok(text) = std::str::from_utf8(pem) else {
        return false;
    };
    let Ok(blocks) = pem_blocks(text) else {
        return false;
    };
    let [(label, der)] = blocks.as_slice() else {
        return false;
    };
    match (label.as_str(), signer.certificate) {
        ("CERTIFICATE", Some(cert)) => der == cert,
        ("CERTIFICATE", None) => super::fulcio::Certificate::from_der(der.clone())
            .is_ok_and(|c| c.key().fingerprint() == signer.key.fingerprint()),
        ("PUBLIC KEY", None) => {
            PublicKey::from_spki_der(der).is_ok_and(|k| k.fingerprint() == signer.key.fingerprint())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Merkle tree hash of `leaves` (RFC 6962, section 2.1).
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    /// The largest power of two smaller than `n`.
    fn split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// The audit path of leaf `m` (RFC 6962, section 2.1.1).
    fn path(m: usize, leaves: &[[u8; 32]]) -> Vec<Vec<u8>> {
        if leaves.len() == 1 {
            return vec![];
        }
        let k = split(leaves.len());
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn inclusion_proofs_of_every_leaf_of_small_trees() {
        for size in 1..=17usize {
            let leaves: Vec<[u8; 32]> = (0..size).map(|i| leaf_hash(&[i as u8])).collect();
            let root = mth(&leaves);
            for m in 0..size {
                let proof = path(m, &leaves);
                assert_eq!(
                    root_from_proof(m as u64, size as u64, leaves[m], &proof),
                    Some(root),
                    "leaf {m} of {size}"
                );
                // Another leaf, index or size does not lead to the root.
                let other = leaf_hash(b"other");
                assert_ne!(
                    root_from_proof(m as u64, size as u64, other, &proof),
                    Some(root)
                );
                if size > 1 {
                    let wrong = (m + 1) % size;
                    assert_ne!(
                        root_from_proof(wrong as u64, size as u64, leaves[m], &proof),
                        Some(root),
                        "leaf {m} at index {wrong} of {size}"
                    );
                }
                assert_eq!(
                    root_from_proof(size as u64, size as u64, leaves[m], &proof),
                    None
                );
            }
        }
    }

    #[test]
    fn set_payload_is_canonical_json() {
        let entry = LogEntry {
            log_index: 7,
            log_id: vec![0xab, 0x01],
            integrated_time: 1_700_000_000,
            body: b"{}".to_vec(),
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(set_payload(&entry)).unwrap(),
            r#"{"body":"e30=","integratedTime":1700000000,"logID":"ab01","logIndex":7}"#
        );
    }

    #[test]
    fn checkpoints() {
        let text = "origin - 1\n3\nAAAA\nTimestamp: 1\n\n\u{2014} origin AQIDBAUG\n";
        let c = Checkpoint::parse(text).unwrap();
        assert_eq!(c.note, "origin - 1\n3\nAAAA\nTimestamp: 1\n");
        assert_eq!(c.size, 3);
        assert_eq!(c.root, vec![0, 0, 0]);
        assert_eq!(c.signatures, vec![(vec![1, 2, 3, 4], vec![5, 6])]);
        for bad in [
            "no signatures\n3\nAAAA\n",
            "o\nx\nAAAA\n\n\u{2014} o AQIDBAUG\n",
        ] {
            assert!(Checkpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
