// A Node.js client of the gateway, written from proto/veilgate/v1 and the formats documented in
// them: a department pushes a record, a citizen fetches their data and consents, a bank evaluates,
// the citizen revokes, and an auditor checks every receipt against a signed checkpoint.
//
// It reads a job (JSON) on stdin and writes a report (JSON) on stdout; tests/interop drives it
// against a real gateway and compares the report with what the Python side knows.

import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { getProtoPath } from "google-proto-files";
import protobuf from "protobufjs";
import {
  Rejected,
  canonicalJson,
  ed25519PrivateKey,
  ed25519PublicKey,
  isMine,
  leafHash,
  openCheckpoint,
  openSealed,
  parseVerifierKey,
  sha256b64url,
  signJws,
  verifyConsistency,
  verifyInclusion,
  verifyJws,
} from "./verify.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../../proto");
const PROTOS = ["citizen", "eligibility", "audit", "ingest"].map((s) => `veilgate/v1/${s}.proto`);
const options = { keepCase: true, longs: String, enums: String, defaults: true, includeDirs: [protoRoot] };
const v1 = grpc.loadPackageDefinition(protoLoader.loadSync(PROTOS, options)).veilgate.v1;
const messages = new protobuf.Root().loadSync(path.join(protoRoot, "veilgate/v1/ingest.proto"), { keepCase: true });
const rpcTypes = new protobuf.Root().loadSync([getProtoPath("rpc", "status.proto"), getProtoPath("rpc", "error_details.proto")], {
  keepCase: true,
});

const job = JSON.parse(readFileSync(0, "utf8"));
const bytes = (b64) => Buffer.from(b64, "base64");

// --- calls -------------------------------------------------------------------------------------

function unary(client, method, request) {
  return new Promise((resolve, reject) => client[method](request, (err, reply) => (err ? reject(err) : resolve(reply))));
}

// The ErrorInfo reason of a refused call, read from its google.rpc.Status details.
function reasonOf(err) {
  const [details] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (details === undefined) throw new Error(`a refusal without status details: ${err.message}`);
  const status = rpcTypes.lookupType("google.rpc.Status").decode(details);
  const any = status.details.find((d) => d.type_url.endsWith("/google.rpc.ErrorInfo"));
  const info = rpcTypes.lookupType("google.rpc.ErrorInfo").decode(any.value);
  if (info.domain !== "veilgate") throw new Error(`ErrorInfo domain is ${info.domain}`);
  return { code: grpc.status[err.code], reason: info.reason };
}

async function refusal(promise) {
  try {
    await promise;
  } catch (err) {
    return reasonOf(err);
  }
  throw new Error("the call was expected to be refused");
}

// Whether `check` throws Rejected on a tampered input, as it must.
function rejects(check) {
  try {
    check();
  } catch (err) {
    if (err instanceof Rejected) return true;
    throw err;
  }
  return false;
}

const flip = (buf, at) => {
  const copy = Buffer.from(buf);
  copy[at] ^= 0x01;
  return copy;
};

// --- the actors ----------------------------------------------------------------------------------

const ca = Buffer.from(job.ca_pem);
const tls = grpc.credentials.createSsl(ca);
const mtls = (who) => grpc.credentials.createSsl(ca, Buffer.from(who.key_pem), Buffer.from(who.cert_pem));
const citizenService = new v1.CitizenService(job.target, tls);
const auditService = new v1.AuditService(job.target, tls);
const bankService = new v1.EligibilityService(job.mtls_target, mtls(job.bank));
const departmentService = new v1.IngestService(job.mtls_target, mtls(job.department));

const pinnedKeys = Object.fromEntries(job.gateway_keys.map((k) => [k.key_id, ed25519PublicKey(bytes(k.public_key))]));
const logVerifier = parseVerifierKey(job.log_verifier_key);

const citizen = job.citizen;
const citizenKey = ed25519PrivateKey(bytes(citizen.signing_seed), bytes(citizen.signing_public_key));
let gatewayId;

function requestToken(operation, claims = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = {
    ...claims,
    iss: citizen.id,
    aud: gatewayId,
    op: `/veilgate.v1.CitizenService/${operation}`,
    jti: randomBytes(18).toString("base64url"),
    iat: now,
    exp: now + 120,
  };
  return signJws(body, { privateKey: citizenKey, typ: "veilgate-request+jwt", kid: citizen.key_id });
}

async function checkpoint(minTreeSize) {
  const reply = await unary(auditService, "GetCheckpoint", { min_tree_size: String(minTreeSize) });
  return { note: reply.checkpoint, ...openCheckpoint(reply.checkpoint, logVerifier) };
}

async function entryAt(index) {
  const reply = await unary(auditService, "GetEntries", { start: String(index), count: 1 });
  if (reply.entries.length !== 1 || reply.entries[0].index !== String(index)) throw new Error(`no entry ${index}`);
  return reply.entries[0].entry;
}

// The entry at `index`, proven included under `cp` (a verified checkpoint).
async function provenEntry(index, cp) {
  const raw = await entryAt(index);
  const { hashes } = await unary(auditService, "GetInclusionProof", { index: String(index), tree_size: String(cp.treeSize) });
  verifyInclusion({ leaf: leafHash(raw), index: BigInt(index), treeSize: cp.treeSize, proof: hashes, root: cp.root });
  return { raw, hashes, entry: JSON.parse(raw.toString("utf8")) };
}

// --- the journey ---------------------------------------------------------------------------------

const report = {};

const info = await unary(citizenService, "GetGatewayInfo", {});
gatewayId = info.gateway_id;
const served = Object.fromEntries(info.signing_keys.map((k) => [k.key_id, k.public_key.toString("base64")]));
report.gateway = {
  id: gatewayId,
  keys_match_pins: job.gateway_keys.every((k) => served[k.key_id] === k.public_key),
  log_key_matches_pin: info.log_verifier_key === job.log_verifier_key,
};
const first = await checkpoint(1);

// A department pushes one record over mutual TLS; the entry's request hash is salted.
const push = { records: [job.department.record] };
const pushed = await unary(departmentService, "PushRecords", push);
const pushRequestBytes = messages.lookupType("veilgate.v1.PushRecordsRequest").encode(push).finish();
report.push = {
  stored: pushed.stored,
  stale: pushed.stale,
  log_index: pushed.log_index,
  salted_request: sha256b64url(Buffer.concat([pushed.request_salt, pushRequestBytes])),
  unsalted_request: sha256b64url(pushRequestBytes),
};
report.push_of_another_department = await refusal(
  unary(departmentService, "PushRecords", { records: [{ ...job.department.record, item_id: job.department.foreign_item }] }),
);

// The citizen fetches their data: a sealed box of a gateway-signed JWS.
const dataToken = requestToken("GetMyData");
const data = await unary(citizenService, "GetMyData", { request_token: dataToken });
const signedDelivery = await openSealed(data.sealed_delivery, bytes(citizen.encryption_secret));
const delivery = verifyJws(signedDelivery.toString("ascii"), { typ: "veilgate-delivery+jwt", keys: pinnedKeys });
report.delivery = {
  sub: delivery.sub,
  iss: delivery.iss,
  bound_to_request: delivery.request === sha256b64url(Buffer.from(dataToken, "ascii")),
  watermark: delivery.watermark,
  items: delivery.items,
  log_index: data.log_index,
  sealed_sha256: sha256b64url(data.sealed_delivery),
};
report.delivery_replayed = await refusal(unary(citizenService, "GetMyData", { request_token: dataToken }));

// The citizen reads the policy they consent to, signs a consent pinning its text, and registers it.
const { policies } = await unary(citizenService, "ListPolicies", {});
const policy = policies.find((p) => p.id === job.policy_id);
const now = Math.floor(Date.now() / 1000);
const consentClaims = {
  iss: citizen.id,
  sub: citizen.id,
  aud: job.bank.id,
  jti: randomBytes(18).toString("base64url"),
  iat: now,
  nbf: now,
  exp: now + 3600,
  purpose: policy.purpose,
  policies: [{ id: policy.id, sha256: policy.sha256 }],
  max_uses: 3,
};
const consent = signJws(consentClaims, { privateKey: citizenKey, typ: "veilgate-consent+jwt", kid: citizen.key_id });
const registered = await unary(citizenService, "RegisterConsent", {
  request_token: requestToken("RegisterConsent", { consent: consentClaims.jti }),
  consent_token: consent,
});
report.consent = { id: registered.consent.consent_id, institution: registered.consent.institution_id };

// The bank evaluates under the consent and checks the signed result on its own.
const bankPolicies = await unary(bankService, "ListPolicies", {});
const evaluation = {
  policy_id: job.policy_id,
  consent_token: consent,
  request_id: `node-${randomBytes(8).toString("hex")}`,
  parameters: job.parameters,
};
const evaluated = await unary(bankService, "Evaluate", evaluation);
const result = verifyJws(evaluated.signed_result, { typ: "veilgate-result+jwt", keys: pinnedKeys });
// Written in another order than the canonical one on purpose: the hash is of the canonical form.
const asked = { request_id: evaluation.request_id, policy: job.policy_id, parameters: job.parameters, consent: consentClaims.jti };
report.result = {
  bank_sees_policy: bankPolicies.policies.some((p) => p.id === job.policy_id && p.sha256 === policy.sha256),
  claims: result,
  answers_this_request: result.request === sha256b64url(Buffer.from(canonicalJson(asked), "utf8")),
  pins_the_consented_text: result.policy.sha256 === policy.sha256,
  log_index: evaluated.log_index,
  signed_result: evaluated.signed_result,
};
const forged = `${consent.slice(0, -2)}${consent.endsWith("AA") ? "BA" : "AA"}`;
report.refusals = {
  unknown_policy: await refusal(unary(bankService, "Evaluate", { ...evaluation, policy_id: "credit.no_such_policy" })),
  forged_consent: await refusal(unary(bankService, "Evaluate", { ...evaluation, consent_token: forged, request_id: "node-forged-1" })),
};

// The citizen sees who asked, and revokes; the bank's next call is refused.
const seen = await unary(citizenService, "ListEvaluations", { request_token: requestToken("ListEvaluations") });
report.citizen_sees = seen.evaluations.map((e) => ({ institution: e.institution_id, policy: e.policy_id, request_id: e.request_id }));
await unary(citizenService, "RevokeConsent", { request_token: requestToken("RevokeConsent", { consent: consentClaims.jti }) });
report.refusals.after_revocation = await refusal(
  unary(bankService, "Evaluate", { ...evaluation, request_id: `${evaluation.request_id}-2` }),
);

// An auditor checks every receipt under a checkpoint it verified, and that the log only grew.
const last = await checkpoint(BigInt(evaluated.log_index) + 1n);
const { hashes: consistency } = await unary(auditService, "GetConsistencyProof", {
  first: String(first.treeSize),
  second: String(last.treeSize),
});
verifyConsistency({ firstSize: first.treeSize, secondSize: last.treeSize, firstRoot: first.root, secondRoot: last.root, proof: consistency });
const pushEntry = await provenEntry(pushed.log_index, last);
const dataEntry = await provenEntry(data.log_index, last);
const resultEntry = await provenEntry(evaluated.log_index, last);
report.audit = {
  first: { tree_size: String(first.treeSize), root: first.root.toString("base64") },
  last: { tree_size: String(last.treeSize), root: last.root.toString("base64") },
  push_entry: pushEntry.entry,
  data_entry: dataEntry.entry,
  result_entry: resultEntry.entry,
  result_entry_is_the_result: resultEntry.entry.result === sha256b64url(Buffer.from(evaluated.signed_result, "ascii")),
  data_entry_is_the_delivery: dataEntry.entry.result === report.delivery.sealed_sha256,
};

// The citizen's own trail: every entry proven, and recognised by the citizen's log key alone.
const history = await unary(citizenService, "ListMyAccessHistory", { request_token: requestToken("ListMyAccessHistory") });
const historyCheckpoint = openCheckpoint(history.checkpoint, logVerifier);
report.history = history.entries.map((e) => {
  verifyInclusion({
    leaf: leafHash(e.entry),
    index: BigInt(e.index),
    treeSize: historyCheckpoint.treeSize,
    proof: e.inclusion_proof,
    root: historyCheckpoint.root,
  });
  const entry = JSON.parse(e.entry.toString("utf8"));
  return { index: e.index, method: entry.method, mine: isMine(entry, history.log_key) };
});

// Each check must be able to fail: the same checks on tampered copies.
const noteLines = last.note.split("\n");
noteLines[2] = `${noteLines[2][0] === "A" ? "B" : "A"}${noteLines[2].slice(1)}`;
const tamperedNote = noteLines.join("\n");
report.tampered_rejected = {
  result_signature: rejects(() =>
    verifyJws(evaluated.signed_result.replace(/\.([A-Za-z0-9_-])/, (_, c) => `.${c === "e" ? "f" : "e"}`), {
      typ: "veilgate-result+jwt",
      keys: pinnedKeys,
    }),
  ),
  result_as_delivery: rejects(() => verifyJws(evaluated.signed_result, { typ: "veilgate-delivery+jwt", keys: pinnedKeys })),
  checkpoint_root: rejects(() => openCheckpoint(tamperedNote, logVerifier)),
  inclusion_proof: rejects(() =>
    verifyInclusion({
      leaf: leafHash(resultEntry.raw),
      index: BigInt(evaluated.log_index),
      treeSize: last.treeSize,
      proof: resultEntry.hashes.map((h, i) => (i === 0 ? flip(h, 0) : h)),
      root: last.root,
    }),
  ),
  entry_bytes: rejects(() =>
    verifyInclusion({
      leaf: leafHash(flip(resultEntry.raw, 2)),
      index: BigInt(evaluated.log_index),
      treeSize: last.treeSize,
      proof: resultEntry.hashes,
      root: last.root,
    }),
  ),
  subject_under_another_key: !isMine(resultEntry.entry, flip(history.log_key, 0)),
  consistency_proof:
    consistency.length > 0 &&
    rejects(() =>
      verifyConsistency({
        firstSize: first.treeSize,
        secondSize: last.treeSize,
        firstRoot: first.root,
        secondRoot: last.root,
        proof: consistency.map((h, i) => (i === consistency.length - 1 ? flip(h, 31) : h)),
      }),
    ),
};
try {
  await openSealed(flip(data.sealed_delivery, data.sealed_delivery.length - 1), bytes(citizen.encryption_secret));
  report.tampered_rejected.sealed_box = false;
} catch (err) {
  report.tampered_rejected.sealed_box = err instanceof Rejected;
}

for (const client of [citizenService, auditService, bankService, departmentService]) client.close();
process.stdout.write(`${JSON.stringify(report)}\n`);
