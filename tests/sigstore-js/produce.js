#!/usr/bin/env node
// Keyless signatures for imagegate's tests, made by the Sigstore JavaScript libraries.
//
// @sigstore/mock provides test Fulcio, Rekor, CT-log and timestamp authorities (served in this
// process through nock); @sigstore/sign makes the signatures and bundles against them, exactly
// as it does against Sigstore's public instance; @sigstore/verify checks every case that should
// verify (and every case that should not) before imagegate's own verifier ever sees it;
// @sigstore/oci attaches bundles to an image in a registry as OCI 1.1 referrers.
//
// Usage:
//   node produce.js --out DIR [--manifest FILE] [--image NAME] [--cases a,b,…]
//                   [--attach HOST:PORT/REPOSITORY] [--attach-plan FILE]
//                   [--username U --password P]
//
// Writes into DIR:
//   trusted_root.json      the test authorities as a dev.sigstore.trustedroot document
//   manifest.json          the image manifest signed (copied from --manifest, or made up)
//   cases.json             one entry per case: name, what it is, the digest it signs, identity
//   NAME.bundle.json       the Sigstore bundle of a bundle case
//   NAME.cosign.json       the parts of a cosign `.sig` layer of a cosign case
//   NAME.pub               the public key of a key case
//
// With --attach, every bundle case produced is attached to the image (the manifest's digest)
// in that repository through @sigstore/oci, which falls back to the referrers tag schema on a
// registry without the referrers API. --attach-plan FILE names, instead, which bundle cases to
// attach to the image in which repository: a JSON list of {"image": "HOST:PORT/REPOSITORY",
// "cases": ["dsse-v03", …]} (the manifest must be in each repository already).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const nock = require('nock');
const mock = require('@sigstore/mock');
const sign = require('@sigstore/sign');
const verify = require('@sigstore/verify');
const bundleLib = require('@sigstore/bundle');
const specs = require('@sigstore/protobuf-specs');
const oci = require('@sigstore/oci');

const FULCIO_URL = 'https://fulcio.imagegate.test';
const UNTRUSTED_FULCIO_URL = 'https://fulcio.untrusted.imagegate.test';
const REKOR_URL = 'https://rekor.imagegate.test';
const TSA_URL = 'https://tsa.imagegate.test';

/** The identity of the release workflow that signs (a GitHub Actions token's claims). */
const ISSUER = 'https://token.actions.githubusercontent.com';
const SUBJECT =
  'https://github.com/corp/app/.github/workflows/release.yml@refs/tags/v1.2.3';
const OTHER_SUBJECT =
  'https://github.com/evil/app/.github/workflows/release.yml@refs/heads/main';
const OTHER_ISSUER = 'https://accounts.example.com';

/** The issuer extensions Fulcio writes: v1 holds the raw string, v2 a DER UTF8String. */
const OID_ISSUER_V1 = '1.3.6.1.4.1.57264.1.1';
const OID_ISSUER_V2 = '1.3.6.1.4.1.57264.1.8';

const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json';
const IN_TOTO_STATEMENT_V1 = 'https://in-toto.io/Statement/v1';
/** The predicate type of an image signature as `cosign sign` writes it into a bundle. */
const COSIGN_SIGN_PREDICATE = 'https://sigstore.dev/cosign/sign/v1';
const SLSA_PREDICATE = 'https://slsa.dev/provenance/v1';

/** How far in the past the authorities' own certificates start, so that signatures can be
 * made "two hours ago" with certificates that have long expired when the tests run. */
const AUTHORITIES_AGE_SECONDS = 24 * 3600;
/** When the "expired" cases were signed: long past the ten minutes a Fulcio certificate lives. */
const EXPIRED_AGE_SECONDS = 2 * 3600;
/** How long before the log saw it the certificate of `signed-after-expiry` was issued. */
const AFTER_EXPIRY_SECONDS = 3600;

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) {
      throw new Error(`expected --name value pairs, got ${argv.slice(i).join(' ')}`);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  if (!out.out) throw new Error('--out DIR is required');
  return out;
}

const sha256 = (data) => crypto.createHash('sha256').update(data).digest();
const toPem = (der) =>
  `-----BEGIN CERTIFICATE-----\n${Buffer.from(der)
    .toString('base64')
    .match(/.{1,64}/g)
    .join('\n')}\n-----END CERTIFICATE-----\n`;

/** Runs `f` while the process believes it is `seconds` earlier (the mock authorities date
 * their root certificates with `new Date()`). */
async function inThePast(seconds, f) {
  const RealDate = Date;
  const shift = seconds * 1000;
  class PastDate extends RealDate {
    constructor(...a) {
      if (a.length === 0) super(RealDate.now() - shift);
      else super(...a);
    }
    static now() {
      return RealDate.now() - shift;
    }
  }
  globalThis.Date = PastDate;
  try {
    return await f();
  } finally {
    globalThis.Date = RealDate;
  }
}

/** A nock reply function over a @sigstore/mock handler. */
function reply(fn) {
  return async (_uri, body) => {
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    const { statusCode, response, contentType } = await fn(text);
    return [statusCode, response, { 'Content-Type': contentType || 'text/plain' }];
  };
}

/**
 * What Rekor stores for a proposed entry. The mock logs the proposed entry as it is; the real
 * Rekor canonicalises `dsse` entries into hashes and signatures (the envelope itself is not
 * stored) and `intoto` entries without their payload. Verifiers read the stored form, so the
 * test log stores that form too.
 */
function rekorCanonical(proposed) {
  if (proposed.kind === 'dsse') {
    const text = proposed.spec.proposedContent.envelope;
    const envelope = JSON.parse(text);
    const verifier = proposed.spec.proposedContent.verifiers[0];
    return {
      apiVersion: proposed.apiVersion,
      kind: 'dsse',
      spec: {
        envelopeHash: { algorithm: 'sha256', value: sha256(text).toString('hex') },
        payloadHash: {
          algorithm: 'sha256',
          value: sha256(Buffer.from(envelope.payload, 'base64')).toString('hex'),
        },
        signatures: envelope.signatures.map((s) => ({ signature: s.sig, verifier })),
      },
    };
  }
  if (proposed.kind === 'intoto') {
    const stored = JSON.parse(JSON.stringify(proposed));
    delete stored.spec.content.envelope.payload;
    return stored;
  }
  return proposed;
}

/** The authorities: a trusted Fulcio with its CT log, an untrusted Fulcio, Rekor and a TSA.
 * Each has its own clock object, which the cases move. */
async function authorities() {
  const clocks = { ca: new Date(), log: new Date(), tsa: new Date() };
  const key = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const made = await inThePast(AUTHORITIES_AGE_SECONDS, async () => {
    const caKey = key();
    const ctlog = await mock.initializeCTLog(caKey);
    const ca = await mock.initializeCA(caKey, ctlog, clocks.ca);
    const otherKey = key();
    const otherCa = await mock.initializeCA(
      otherKey,
      await mock.initializeCTLog(otherKey),
      clocks.ca,
    );
    const rekorKey = key();
    const tlog = await mock.initializeTLog(REKOR_URL, rekorKey, clocks.log);
    const tsa = await mock.initializeTSA(key(), clocks.tsa);
    return { ca, ctlog, otherCa, tlog, tsa, start: new Date() };
  });

  nock(FULCIO_URL).persist().post('/api/v2/signingCert')
    .reply(reply(mock.fulcioHandler(made.ca).fn));
  nock(UNTRUSTED_FULCIO_URL).persist().post('/api/v2/signingCert')
    .reply(reply(mock.fulcioHandler(made.otherCa).fn));
  nock(REKOR_URL).persist().post('/api/v1/log/entries').reply(async (_uri, body) => {
    const proposed = typeof body === 'string' ? JSON.parse(body) : body;
    const entry = await made.tlog.log(rekorCanonical(proposed));
    return [201, JSON.stringify(entry), { 'Content-Type': 'application/json' }];
  });
  nock(TSA_URL).persist().post('/api/v1/timestamp')
    .reply(reply(mock.tsaHandler(made.tsa).fn));
  return { ...made, clocks };
}

/** The test authorities as a Sigstore trusted root (the untrusted Fulcio is left out). */
function trustedRoot(a) {
  const validFor = { start: a.start };
  const logKey = (publicKey, logId, baseUrl) => ({
    baseUrl,
    hashAlgorithm: specs.HashAlgorithm.SHA2_256,
    publicKey: {
      rawBytes: publicKey,
      keyDetails: specs.PublicKeyDetails.PKIX_ECDSA_P256_SHA_256,
      validFor,
    },
    logId: { keyId: logId },
  });
  return {
    mediaType: 'application/vnd.dev.sigstore.trustedroot+json;version=0.1',
    tlogs: [logKey(a.tlog.publicKey, sha256(a.tlog.publicKey), REKOR_URL)],
    certificateAuthorities: [
      {
        subject: { organization: 'sigstore.mock', commonName: 'sigstore' },
        uri: FULCIO_URL,
        certChain: { certificates: [{ rawBytes: a.ca.rootCertificate }] },
        validFor,
      },
    ],
    ctlogs: [logKey(a.ctlog.publicKey, Buffer.from(a.ctlog.logID), 'https://ctfe.imagegate.test')],
    timestampAuthorities: [
      {
        subject: { organization: 'sigstore.mock', commonName: 'tsa' },
        uri: TSA_URL,
        certChain: {
          certificates: [{ rawBytes: a.tsa.intCertificate }, { rawBytes: a.tsa.rootCertificate }],
        },
        validFor,
      },
    ],
  };
}

/** An OIDC identity token with these claims, as Fulcio reads it (the mock does not check the
 * token's signature, so it carries none). */
function identity(claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const token = `${part({ alg: 'none', typ: 'JWT' })}.${part({ aud: 'sigstore', ...claims })}.`;
  return { getToken: async () => token };
}

/** A signer whose certificate the mock CA issues with exactly the given issuer extensions
 * (to make certificates with only the v1 or only the v2 issuer extension). */
function certificateSigner(ca, subject, extensions) {
  const pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let certificate;
  return {
    async sign(data) {
      if (!certificate) {
        const der = await ca.issueCertificate({
          publicKey: pair.publicKey.export({ format: 'der', type: 'spki' }),
          subjectAltName: subject,
          extensions,
        });
        certificate = toPem(der);
      }
      return {
        signature: crypto.sign('sha256', data, pair.privateKey),
        key: { $case: 'x509Certificate', certificate },
      };
    },
  };
}

/** A signer with a plain key pair (no certificate): bundles for `key` entries. */
function keySigner() {
  const pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicKey = pair.publicKey.export({ format: 'pem', type: 'spki' }).toString();
  return {
    publicKey,
    async sign(data) {
      return {
        signature: crypto.sign('sha256', data, pair.privateKey),
        key: { $case: 'publicKey', publicKey, hint: '' },
      };
    },
  };
}

/** The in-toto statement an image signature bundle carries. */
function statement(image, digest, predicateType = COSIGN_SIGN_PREDICATE) {
  const [algorithm, hex] = digest.split(':');
  return Buffer.from(
    JSON.stringify({
      _type: IN_TOTO_STATEMENT_V1,
      subject: [{ name: image, digest: { [algorithm]: hex } }],
      predicateType,
      predicate: {},
    }),
  );
}

/** cosign's simple-signing payload for `digest`. */
function simpleSigning(image, digest) {
  return Buffer.from(
    JSON.stringify({
      critical: {
        identity: { 'docker-reference': image },
        image: { 'docker-manifest-digest': digest },
        type: 'cosign container image signature',
      },
      optional: null,
    }),
  );
}

/** A made-up image manifest (what a registry would serve for the image). */
function madeUpManifest() {
  const blob = (mediaType, seed) => ({
    mediaType,
    digest: `sha256:${sha256(seed).toString('hex')}`,
    size: 1234,
  });
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: blob('application/vnd.oci.image.config.v1+json', crypto.randomBytes(16)),
      layers: [blob('application/vnd.oci.image.layer.v1.tar+gzip', crypto.randomBytes(16))],
    }),
  );
}

async function main() {
  const opts = args();
  fs.mkdirSync(opts.out, { recursive: true });
  const image = opts.image || 'registry.imagegate.test/corp/app';
  const manifest = opts.manifest ? fs.readFileSync(opts.manifest) : madeUpManifest();
  const digest = `sha256:${sha256(manifest).toString('hex')}`;
  const otherDigest = `sha256:${sha256(madeUpManifest()).toString('hex')}`;
  fs.writeFileSync(path.join(opts.out, 'manifest.json'), manifest);

  const a = await authorities();
  const root = trustedRoot(a);
  fs.writeFileSync(
    path.join(opts.out, 'trusted_root.json'),
    JSON.stringify(specs.TrustedRoot.toJSON(root), null, 2),
  );

  const fetchOptions = { timeout: 5000, retry: { retries: 0 } };
  const fulcio = (claims, url = FULCIO_URL) =>
    new sign.FulcioSigner({ fulcioBaseURL: url, identityProvider: identity(claims), ...fetchOptions });
  const release = () => fulcio({ iss: ISSUER, sub: SUBJECT });
  const rekor = (entryType) =>
    new sign.RekorWitness({ rekorBaseURL: REKOR_URL, entryType, ...fetchOptions });
  const tsa = () => new sign.TSAWitness({ tsaBaseURL: TSA_URL, ...fetchOptions });

  // Every case: how it is signed, what it signs, and whether @sigstore/verify must accept it
  // for the release identity at the time it was made.
  const dsse = (o) => ({ kind: 'dsse', ...o });
  const message = (o) => ({ kind: 'message', ...o });
  const cosignLayer = (o) => ({ kind: 'cosign', ...o });
  const cases = {
    // The release workflow's signatures, in each bundle version and content the libraries make.
    'dsse-v03': dsse({ signer: release, witnesses: () => [rekor('dsse'), tsa()], good: true }),
    'dsse-v02-intoto': dsse({
      signer: release,
      witnesses: () => [rekor('intoto')],
      chain: true,
      good: true,
    }),
    'message-v02': message({ signer: release, witnesses: () => [rekor(), tsa()], good: true }),
    'message-v01': message({ signer: release, witnesses: () => [rekor()], version: '0.1', good: true }),
    'cosign-keyless': cosignLayer({ signer: release, witnesses: () => [rekor()], good: true }),
    // Signing time proven by a timestamp authority alone, or by nothing at all.
    'dsse-tsa-only': dsse({ signer: release, witnesses: () => [tsa()], good: 'tsa' }),
    'dsse-no-witness': dsse({ signer: release, witnesses: () => [], good: false }),
    'cosign-no-bundle': cosignLayer({ signer: release, witnesses: () => [], good: false }),
    // Another identity; another issuer; a certificate from a CA the trusted root does not hold.
    'dsse-other-subject': dsse({
      signer: () => fulcio({ iss: ISSUER, sub: OTHER_SUBJECT }),
      witnesses: () => [rekor('dsse')],
      good: true,
    }),
    'dsse-other-issuer': dsse({
      signer: () => fulcio({ iss: OTHER_ISSUER, sub: SUBJECT }),
      witnesses: () => [rekor('dsse')],
      good: true,
    }),
    'dsse-untrusted-ca': dsse({
      signer: () => fulcio({ iss: ISSUER, sub: SUBJECT }, UNTRUSTED_FULCIO_URL),
      witnesses: () => [rekor('dsse')],
      good: false,
    }),
    // Certificates with only one of Fulcio's two issuer extensions.
    'dsse-issuer-v1-only': dsse({
      signer: () =>
        certificateSigner(a.ca, SUBJECT, [{ oid: OID_ISSUER_V1, value: ISSUER, legacy: true }]),
      witnesses: () => [rekor('dsse')],
      good: true,
    }),
    'dsse-issuer-v2-only': dsse({
      signer: () => certificateSigner(a.ca, SUBJECT, [{ oid: OID_ISSUER_V2, value: ISSUER }]),
      witnesses: () => [rekor('dsse')],
      good: true,
    }),
    // Signed with a correct identity, but for another image, or as an attestation.
    'dsse-other-digest': dsse({
      signer: release,
      witnesses: () => [rekor('dsse')],
      digest: otherDigest,
      good: true,
    }),
    'dsse-attestation': dsse({
      signer: release,
      witnesses: () => [rekor('dsse')],
      predicateType: SLSA_PREDICATE,
      good: true,
    }),
    'cosign-other-digest': cosignLayer({
      signer: release,
      witnesses: () => [rekor()],
      digest: otherDigest,
      good: true,
    }),
    // Signed two hours ago: the certificate has expired, the log says when it was used.
    'dsse-expired-logged': dsse({
      signer: release,
      witnesses: () => [rekor('dsse')],
      age: EXPIRED_AGE_SECONDS,
      good: true,
    }),
    'dsse-expired-unlogged': dsse({
      signer: release,
      witnesses: () => [],
      age: EXPIRED_AGE_SECONDS,
      good: false,
    }),
    // The log saw the signature an hour after the certificate had expired.
    'dsse-signed-after-expiry': dsse({
      signer: release,
      witnesses: () => [rekor('dsse'), tsa()],
      caAge: AFTER_EXPIRY_SECONDS,
      good: false,
    }),
    // A plain key pair: a bundle for a `key` entry, with its Rekor entry.
    'message-key': message({ signer: keySigner, witnesses: () => [rekor()], key: true, good: 'key' }),
  };

  const wanted = opts.cases ? opts.cases.split(',') : Object.keys(cases);
  const index = [];
  for (const name of wanted) {
    const c = cases[name];
    if (!c) throw new Error(`no case ${name}; the cases are ${Object.keys(cases).join(', ')}`);
    // Whole seconds: @sigstore/verify reads no fractional seconds in a timestamp's genTime.
    const now = Math.floor(Date.now() / 1000) * 1000;
    a.clocks.ca.setTime(now - 1000 * (c.age || 0) - 1000 * (c.caAge || 0));
    a.clocks.log.setTime(now - 1000 * (c.age || 0));
    a.clocks.tsa.setTime(now - 1000 * (c.age || 0));
    const signer = c.signer();
    const witnesses = c.witnesses();
    const signed = c.digest || digest;
    const entry = { name, kind: c.kind, digest: signed, file: null };
    if (c.kind === 'dsse') {
      const builder = new sign.DSSEBundleBuilder({ signer, witnesses, certificateChain: !!c.chain });
      const payload = statement(image, signed, c.predicateType);
      const bundle = await builder.create({ data: payload, type: IN_TOTO_PAYLOAD_TYPE });
      check(name, c, root, bundle, undefined);
      entry.file = write(opts.out, `${name}.bundle.json`, bundleLib.bundleToJSON(bundle));
      entry.mediaType = bundle.mediaType;
      entry.predicateType = c.predicateType || COSIGN_SIGN_PREDICATE;
    } else if (c.kind === 'message') {
      const builder = new sign.MessageSignatureBundleBuilder({ signer, witnesses });
      const bundle = await builder.create({ data: manifest });
      if (c.version === '0.1') {
        // A v0.1 bundle is a v0.2 bundle whose log entries carry their signed entry
        // timestamps (which @sigstore/bundle checks); the libraries write only v0.2 now.
        bundle.mediaType = 'application/vnd.dev.sigstore.bundle+json;version=0.1';
        bundleLib.assertBundleV01(bundle);
      }
      check(name, c, root, bundle, manifest, signer.publicKey);
      entry.file = write(opts.out, `${name}.bundle.json`, bundleLib.bundleToJSON(bundle));
      entry.mediaType = bundle.mediaType;
      if (c.key) {
        entry.publicKey = write(opts.out, `${name}.pub`, signer.publicKey);
      }
    } else {
      // cosign's `.sig` layer: the simple-signing payload is the signed message; the layer's
      // annotations carry the signature, the certificate, its chain, and the Rekor entry
      // (`dev.sigstore.cosign/bundle`) that @sigstore/sign's witness obtained for it.
      const payload = simpleSigning(image, signed);
      const builder = new sign.MessageSignatureBundleBuilder({ signer, witnesses });
      const bundle = await builder.create({ data: payload });
      check(name, c, root, bundle, payload);
      const leaf = bundle.verificationMaterial.content.x509CertificateChain.certificates[0].rawBytes;
      const tlog = bundle.verificationMaterial.tlogEntries[0];
      const layer = {
        payload: payload.toString('base64'),
        signature: bundle.content.messageSignature.signature.toString('base64'),
        certificate: toPem(leaf),
        chain: toPem(a.ca.rootCertificate),
        bundle: tlog
          ? JSON.stringify({
              SignedEntryTimestamp: tlog.inclusionPromise.signedEntryTimestamp.toString('base64'),
              Payload: {
                body: tlog.canonicalizedBody.toString('base64'),
                integratedTime: Number(tlog.integratedTime),
                logIndex: Number(tlog.logIndex),
                logID: tlog.logId.keyId.toString('hex'),
              },
            })
          : null,
      };
      entry.file = write(opts.out, `${name}.cosign.json`, layer);
    }
    index.push(entry);
    if (opts.attach && entry.mediaType) {
      await attach(opts, opts.attach, digest, entry);
    }
  }
  if (opts['attach-plan']) {
    for (const { image: target, cases: names } of JSON.parse(fs.readFileSync(opts['attach-plan']))) {
      for (const name of names) {
        const entry = index.find((e) => e.name === name);
        if (!entry || !entry.mediaType) throw new Error(`--attach-plan: ${name} is not a bundle case produced`);
        await attach(opts, target, digest, entry);
      }
    }
  }
  write(opts.out, 'cases.json', {
    image,
    digest,
    identity: { issuer: ISSUER, subject: SUBJECT },
    cases: index,
  });
}

/** Checks a case with @sigstore/verify (an implementation imagegate did not write): the good
 * ones verify at the time they were made, the bad ones do not. */
function check(name, c, root, bundle, artifact, publicKey) {
  const entity = verify.toSignedEntity(bundle, artifact);
  // A bare key is trusted by the policy, not by the root: the verifier is handed it.
  const trust = verify.toTrustMaterial(root, () => ({
    publicKey: crypto.createPublicKey(publicKey),
    validFor: () => true,
  }));
  const options = c.good === 'tsa' ? { tlogThreshold: 0 } : c.good === 'key' ? { ctlogThreshold: 0 } : {};
  let error;
  try {
    new verify.Verifier(trust, options).verify(entity);
  } catch (e) {
    error = e;
  }
  const good = c.good !== false;
  if (good && error) throw new Error(`${name}: @sigstore/verify rejects a good case: ${error.message}`);
  if (!good && !error) throw new Error(`${name}: @sigstore/verify accepts a bad case`);
}

function write(dir, file, content) {
  const text = typeof content === 'string' ? content : JSON.stringify(content, null, 2);
  fs.writeFileSync(path.join(dir, file), text);
  return file;
}

/** Attaches a case's bundle to the image `digest` in `target` as a referrer, through
 * @sigstore/oci, with the annotations cosign writes on a bundle's referrer manifest. */
async function attach(opts, target, digest, entry) {
  const annotations =
    entry.kind === 'dsse'
      ? {
          'dev.sigstore.bundle.content': 'dsse-envelope',
          'dev.sigstore.bundle.predicateType': entry.predicateType,
        }
      : { 'dev.sigstore.bundle.content': 'message-signature' };
  await oci.attachArtifactToImage({
    imageName: target,
    imageDigest: digest,
    artifact: fs.readFileSync(path.join(opts.out, entry.file)),
    mediaType: entry.mediaType,
    annotations,
    // Basic credentials when the registry wants them (an open registry answers no challenge).
    credentials: opts.username ? { username: opts.username, password: opts.password } : undefined,
    fetchOpts: { retry: { retries: 0 } },
  });
}

main().catch((e) => {
  for (let err = e; err; err = err.cause) console.error(err.stack || String(err));
  process.exit(1);
});
