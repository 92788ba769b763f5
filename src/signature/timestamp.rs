//! RFC 3161 signed timestamps: a timestamp authority of the trusted root signs that a
//! signature existed at a time, which proves when a short-lived signing certificate was used.
//!
//! The CMS structures are read with RustCrypto's `cms` crate (a pure-Rust, DER-strict reader of
//! RFC 5652 that the RustCrypto project maintains with `x509-cert` and `der`); the signature is
//! verified with `ring`, like every other signature here, and the authority's chain with
//! `rustls-webpki`. The TSTInfo is read with x509-parser's DER reader, which, unlike `der`,
//! accepts the fractional seconds some authorities write into `genTime`.

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::asn1::{ObjectIdentifier, OctetString};
use der::{Decode, Encode, Reader, SliceReader};
use ring::digest;
use x509_cert::Certificate as CmsCertificate;
use x509_parser::der_parser::ber::BerObjectContent;

use super::PublicKey;
use super::fulcio::{EKU_TIME_STAMPING, chain_to};
use super::trust::{CertificateAuthority, TrustedRoot, time};

/// The longest timestamp read: a real response with its certificates is a few kilobytes.
pub const MAX_TIMESTAMP_BYTES: usize = 64 * 1024;

const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");

/// The digest an object identifier names, among those timestamps use.
fn digest_of(oid: &str) -> Option<&'static digest::Algorithm> {
    match oid {
        "2.16.840.1.101.3.4.2.1" => Some(&digest::SHA256),
        "2.16.840.1.101.3.4.2.2" => Some(&digest::SHA384),
        "2.16.840.1.101.3.4.2.3" => Some(&digest::SHA512),
        _ => None,
    }
}

/// Verifies an RFC 3161 timestamp (a `TimeStampResp`, or the bare token) over `signature`,
/// against the trusted root's timestamp authorities, and returns the time it proves (Unix
/// seconds).
pub(crate) fn verify(
    timestamp: &[u8],
    signature: &[u8],
    root: &TrustedRoot,
) -> Result<i64, String> {
    if timestamp.len() > MAX_TIMESTAMP_BYTES {
        return Err(format!(
            "the timestamp is {} bytes long, more than {MAX_TIMESTAMP_BYTES}",
            timestamp.len()
        ));
    }
    let token = token(timestamp)?;
    if token.content_type != ID_SIGNED_DATA {
        return Err("the timestamp is not CMS signed data".to_owned());
    }
    let signed: SignedData = token
        .content
        .decode_as()
        .map_err(|e| format!("the timestamp's signed data is unreadable: {e}"))?;
    if signed.encap_content_info.econtent_type != ID_CT_TST_INFO {
        return Err("the timestamp does not hold a TSTInfo".to_owned());
    }
    let tst_info: OctetString = signed
        .encap_content_info
        .econtent
        .as_ref()
        .ok_or("the timestamp holds no TSTInfo")?
        .decode_as()
        .map_err(|e| format!("the timestamp's TSTInfo is unreadable: {e}"))?;
    let tst_info = tst_info.as_bytes();
    let (imprint_algorithm, imprint, gen_time) = read_tst_info(tst_info)?;

    let algorithm = digest_of(&imprint_algorithm).ok_or_else(|| {
        format!("the timestamp hashes with {imprint_algorithm}, which is not supported")
    })?;
    if digest::digest(algorithm, signature).as_ref() != imprint.as_slice() {
        return Err("the timestamp is for other data than this signature".to_owned());
    }

    let [signer] = signed.signer_infos.0.as_slice() else {
        return Err("the timestamp does not have exactly one signer".to_owned());
    };
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer.sid else {
        return Err(
            "the timestamp names its signer by key identifier, which is not supported".to_owned(),
        );
    };
    let attributes = signer
        .signed_attrs
        .as_ref()
        .ok_or("the timestamp has no signed attributes")?;
    let attribute = |oid| {
        attributes
            .iter()
            .find(|a| a.oid == oid)
            .and_then(|a| a.values.get(0))
    };
    let content_type: Option<ObjectIdentifier> =
        attribute(ID_CONTENT_TYPE).and_then(|v| v.decode_as().ok());
    if content_type != Some(ID_CT_TST_INFO) {
        return Err("the timestamp's signed content type is not TSTInfo".to_owned());
    }
    let signer_digest = digest_of(&signer.digest_alg.oid.to_string())
        .ok_or("the timestamp's signer uses an unsupported digest")?;
    let message_digest: Option<OctetString> =
        attribute(ID_MESSAGE_DIGEST).and_then(|v| v.decode_as().ok());
    if message_digest.as_ref().map(OctetString::as_bytes)
        != Some(digest::digest(signer_digest, tst_info).as_ref())
    {
        return Err("the timestamp's signature does not cover its TSTInfo".to_owned());
    }
    let signed_bytes = attributes
        .to_der()
        .map_err(|e| format!("the timestamp's signed attributes are unreadable: {e}"))?;

    for tsa in root.timestamp_authorities() {
        let Some(leaf) = tsa.chain.first() else {
            continue;
        };
        let Ok(cert) = CmsCertificate::from_der(leaf) else {
            continue;
        };
        if cert.tbs_certificate.issuer != sid.issuer
            || cert.tbs_certificate.serial_number != sid.serial_number
        {
            continue;
        }
        if !tsa.valid.contains(gen_time) {
            return Err(format!(
                "the timestamp authority was not trusted at {} (it is trusted {})",
                time(gen_time),
                tsa.valid
            ));
        }
        let key = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .ok()
            .and_then(|der| PublicKey::from_spki_der(&der).ok())
            .ok_or("the timestamp authority's key cannot be used")?;
        if !key.verify(&signed_bytes, signer.signature.as_bytes()) {
            return Err(
                "the timestamp's signature does not verify under its authority's key".to_owned(),
            );
        }
        authority_chain(tsa, gen_time)?;
        return Ok(gen_time);
    }
    Err("the timestamp is signed by an authority the trusted root does not hold".to_owned())
}

/// The authority's signing certificate must chain to its root at the time it signed, for
/// timestamping.
fn authority_chain(tsa: &CertificateAuthority, at: i64) -> Result<(), String> {
    match tsa.chain.as_slice() {
        [only] => x509_parser::parse_x509_certificate(only)
            .ok()
            .filter(|(_, c)| {
                c.validity().is_valid_at(
                    x509_parser::time::ASN1Time::from_timestamp(at)
                        .unwrap_or(c.validity().not_after),
                )
            })
            .map(|_| ())
            .ok_or_else(|| "the timestamp authority's certificate was not valid then".to_owned()),
        [leaf, middle @ .., root] => {
            let middle: Vec<&[u8]> = middle.iter().map(Vec::as_slice).collect();
            chain_to(leaf, &middle, root, at, EKU_TIME_STAMPING)
                .map_err(|e| format!("the timestamp authority's certificate: {e}"))
        }
        [] => Err("the timestamp authority has no certificate".to_owned()),
    }
}

/// The token of a `TimeStampResp` (status, token), or the bytes themselves when they are the
/// token alone.
fn token(bytes: &[u8]) -> Result<ContentInfo, String> {
    let response = (|| -> der::Result<Option<ContentInfo>> {
        let mut reader = SliceReader::new(bytes)?;
        let token = reader.sequence(|r| {
            let status = r.sequence(|s| {
                let status: u8 = s.decode()?;
                s.read_slice(s.remaining_len())?;
                Ok(status)
            })?;
            // PKIStatus: granted (0) or grantedWithMods (1).
            if status > 1 {
                return Ok(None);
            }
            r.decode::<Option<ContentInfo>>()
        })?;
        reader.finish(token)
    })();
    match response {
        Ok(Some(token)) => Ok(token),
        Ok(None) => Err("the timestamp response did not grant a timestamp".to_owned()),
        Err(_) => ContentInfo::from_der(bytes)
            .map_err(|e| format!("the timestamp is not an RFC 3161 response or token: {e}")),
    }
}

/// The message imprint's algorithm and hash, and the time, of a TSTInfo.
fn read_tst_info(der: &[u8]) -> Result<(String, Vec<u8>, i64), String> {
    let unreadable = |what: &str| format!("the timestamp's TSTInfo is unreadable ({what})");
    let (_, info) =
        x509_parser::der_parser::parse_der(der).map_err(|e| unreadable(&e.to_string()))?;
    let fields = info
        .as_sequence()
        .map_err(|_| unreadable("not a sequence"))?;
    // version, policy, messageImprint, serialNumber, genTime, …
    let imprint = fields
        .get(2)
        .and_then(|i| i.as_sequence().ok())
        .ok_or_else(|| unreadable("no message imprint"))?;
    let algorithm = imprint
        .first()
        .and_then(|a| a.as_sequence().ok())
        .and_then(|a| a.first())
        .and_then(|o| o.as_oid().ok())
        .map(|o| o.to_id_string())
        .ok_or_else(|| unreadable("no imprint algorithm"))?;
    let hash = imprint
        .get(1)
        .and_then(|h| h.as_slice().ok())
        .ok_or_else(|| unreadable("no imprint hash"))?
        .to_vec();
    let gen_time = match fields.get(4).map(|t| &t.content) {
        Some(BerObjectContent::GeneralizedTime(t)) => {
            t.to_datetime()
                .map(|t| t.unix_timestamp())
                .map_err(|_| unreadable("genTime out of range"))?
        }
        _ => return Err(unreadable("no genTime")),
    };
    Ok((algorithm, hash, gen_time))
}
