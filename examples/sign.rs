//! A stand-in for `cosign` on a machine without it, for trying `verifySignatures` locally (the
//! README's signature step): make a key pair, push a small test image, and sign an image as
//! `cosign sign --key` does — with the `sigstore` crate's cosign implementation, which imagegate
//! does not share. The key files are cosign's: `cosign.key` (encrypted, password
//! `$COSIGN_PASSWORD`, empty when unset) and `cosign.pub`.
//!
//! ```sh
//! cargo run --example sign -- keygen DIR                       # DIR/cosign.key, DIR/cosign.pub
//! cargo run --example sign -- push HOST:PORT/REPO:TAG          # a small image; prints its digest
//! cargo run --example sign -- sign DIR/cosign.key HOST:PORT/REPO:TAG
//! ```
//!
//! Registries on `localhost` or `127.0.0.1` are reached over plain HTTP, others over HTTPS.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::{Constraint as _, CosignCapabilities as _, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::crypto::signing_key::SigStoreKeyPair;

/// The size of the random layer of a pushed test image: small, and different every time.
const LAYER_BYTES: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let usage = "usage: sign keygen DIR | sign push HOST/REPO:TAG | sign sign KEY HOST/REPO:TAG";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["keygen", dir] => keygen(PathBuf::from(dir), password.as_bytes()),
        ["push", image] => {
            println!("{}", push(image).await?);
            Ok(())
        }
        ["sign", key, image] => {
            println!(
                "{}",
                sign(PathBuf::from(key), password.as_bytes(), image).await?
            );
            Ok(())
        }
        _ => bail!(usage),
    }
}

/// Writes a new ECDSA P-256 key pair (cosign's default) as `DIR/cosign.key` and `DIR/cosign.pub`.
fn keygen(dir: PathBuf, password: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pair = SigningScheme::ECDSA_P256_SHA256_ASN1
        .create_signer()?
        .to_sigstore_keypair()?;
    std::fs::write(
        dir.join("cosign.key"),
        pair.private_key_to_encrypted_pem(password)?.as_bytes(),
    )?;
    std::fs::write(dir.join("cosign.pub"), pair.public_key_to_pem()?)?;
    println!("{}", dir.join("cosign.pub").display());
    Ok(())
}

fn plain_http(host: &str) -> bool {
    host.starts_with("localhost:") || host.starts_with("127.0.0.1:")
}

fn oci_config(host: &str) -> ClientConfig {
    ClientConfig {
        protocol: if plain_http(host) {
            ClientProtocol::HttpsExcept(vec![host.to_owned()])
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    }
}

/// Pushes a one-layer image as `image`; its manifest digest.
async fn push(image: &str) -> anyhow::Result<String> {
    let reference: oci_client::Reference = image.parse()?;
    let oci = oci_client::Client::new(oci_config(reference.registry()));
    let mut bytes = vec![0u8; LAYER_BYTES];
    getrandom(&mut bytes);
    let layer = ImageLayer::oci_v1(bytes, None);
    let config = Config::oci_v1(
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec(),
        None,
    );
    oci.push(&reference, &[layer], config, &RegistryAuth::Anonymous, None)
        .await
        .with_context(|| format!("cannot push {image}"))?;
    Ok(oci
        .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
        .await?)
}

/// Random bytes from the kernel, so each pushed image has a digest of its own.
fn getrandom(out: &mut [u8]) {
    use std::io::Read as _;
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(out);
    }
}

/// Signs the digest `image` names now with the key in `key`, and pushes the signature to its
/// `sha256-<hex>.sig` tag; the digest signed.
async fn sign(key: PathBuf, password: &[u8], image: &str) -> anyhow::Result<String> {
    let pem = std::fs::read(&key).with_context(|| format!("cannot read {}", key.display()))?;
    let signer = SigStoreKeyPair::from_encrypted_pem(&pem, password)
        .context("cannot decrypt the key (is COSIGN_PASSWORD right?)")?
        .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)?;
    let reference: sigstore::registry::OciReference = image.parse()?;
    let host = reference.registry().to_owned();
    let mut client = sigstore::cosign::ClientBuilder::default()
        .with_oci_client_config(sigstore::registry::ClientConfig {
            protocol: if plain_http(&host) {
                sigstore::registry::ClientProtocol::HttpsExcept(vec![host])
            } else {
                sigstore::registry::ClientProtocol::Https
            },
            ..Default::default()
        })
        .build()?;
    let auth = sigstore::registry::Auth::Anonymous;
    let (signature_ref, digest) = client.triangulate(&reference, &auth).await?;
    let mut layer = SignatureLayer::new_unsigned(&reference, &digest)?;
    if !PrivateKeySigner::new_with_signer(signer).add_constraint(&mut layer)? {
        bail!("the signature could not be added");
    }
    client
        .push_signature(None, &auth, &signature_ref, vec![layer])
        .await
        .with_context(|| format!("cannot push the signature {signature_ref}"))?;
    Ok(digest)
}
