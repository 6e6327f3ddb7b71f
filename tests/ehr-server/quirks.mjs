// Quirks of the sandbox EHR: ways in which real EHR FHIR APIs misbehave, one switch each, set
// at run time with PUT /_control/config {"quirks": {...}} (an empty object ends them all).
//
//   lateCommit: true          writes (Bundles, creates, updates) are not answered; the EHR stores
//                             them later, when POST /_control/settle is called (the client has
//                             given up by then), as an EHR that commits after the client's timeout
//   unreadableBundle: KIND    a Bundle is processed, and answered 200 with `empty` (no body),
//                             `invalid` (JSON cut in half) or `entry-missing` (its last entry gone)
//   pageSize: N               searches answer N entries a page, with a `next` link (HAPI's
//                             `_getpages` paging: the search stays on the server, no MRN in a URL)
//   noLocation: true          no Location header; creates and updates answered without a body;
//                             Bundle entries without their location and resource
//   oddLocation: true         Locations with a query (`.../Type/id?_format=json?_format=json`,
//                             no version); creates and updates answered without a body
//   notFoundOnUpdate: true    every update (PUT) answered 404 though the resource is there
//   redirect: true            every request but GET metadata answered 307 to the decoy's origin
//   html: true | writes       every request but GET metadata (or every write) answered 200 with
//                             an HTML page, without acting on it (a proxy's sign-in page)
//   metadata: KIND            GET metadata answered `empty` ({}), `html`, `invalid` JSON, or
//                             `forbidden` (403)
//   retryAfter: SECONDS       every request but GET metadata answered 429 with Retry-After
//   trickle: MS               every answer but metadata's written a byte every MS milliseconds
//   cutShort: true            every answer but metadata's cut off halfway (chunked, then reset)
//   hugeBody: BYTES           every answer but metadata's a 200 of BYTES bytes
//   fhirVersion: VERSION      the CapabilityStatement announces this FHIR version
//   forbidden: all | writes   403 to every request (metadata too) or to every write
//   unavailable: true | searches  503 to every request but GET metadata (or to every search)
import { randomUUID } from 'node:crypto';

const pages = new Map();
const FHIR_JSON = { 'content-type': 'application/fhir+json' };
const HTML = '<!doctype html><html><head><title>Sign in</title></head><body><form>Sign in to continue</form></body></html>';

function outcome(status, text) {
  const code = { 403: 'forbidden', 429: 'throttled', 503: 'transient' }[status] ?? 'exception';
  const body = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
  return { status, headers: { ...FHIR_JSON }, text: JSON.stringify(body) };
}

function html() {
  return { status: 200, headers: { 'content-type': 'text/html; charset=utf-8' }, text: HTML };
}

function isSearch(method, path) {
  return (method === 'POST' && path.endsWith('_search')) || (method === 'GET' && /^[A-Za-z]+$/.test(path) && path !== 'metadata');
}

function isWrite(method, path) {
  return (method === 'POST' && !path.endsWith('_search')) || method === 'PUT' || method === 'DELETE';
}

export function clearQuirkState() {
  pages.clear();
}

export function capabilityQuirks(quirks, statement) {
  if (quirks?.fhirVersion) {
    statement.fhirVersion = quirks.fhirVersion;
  }
  return statement;
}

export function metadataQuirk(quirks) {
  switch (quirks?.metadata ?? (quirks?.forbidden === 'all' ? 'forbidden' : null)) {
    case 'empty':
      return { status: 200, headers: { ...FHIR_JSON }, text: '{}' };
    case 'html':
      return html();
    case 'invalid':
      return { status: 200, headers: { ...FHIR_JSON }, text: '{"resourceType":"CapabilityStatement","rest":[{"mode":' };
    case 'forbidden':
      return outcome(403, 'this client may not read the CapabilityStatement');
    default:
      return null;
  }
}

// An answer in place of the server's, or 'hold' (a write stored later, never answered), or null.
export function beforeRouter(quirks, { method, path, search, decoyOrigin }) {
  if (quirks.redirect) {
    return { status: 307, headers: { location: `${decoyOrigin}/fhir/${path}${search}` }, text: '' };
  }
  if (quirks.forbidden === 'all' || (quirks.forbidden === 'writes' && isWrite(method, path))) {
    return outcome(403, 'this client may not do this');
  }
  if (quirks.unavailable === true || (quirks.unavailable === 'searches' && isSearch(method, path))) {
    return outcome(503, 'the server is unavailable');
  }
  if (quirks.retryAfter) {
    const throttled = outcome(429, 'too many requests');
    throttled.headers['retry-after'] = String(quirks.retryAfter);
    return throttled;
  }
  if (quirks.html === true || (quirks.html === 'writes' && isWrite(method, path))) {
    return html();
  }
  if (quirks.lateCommit && isWrite(method, path)) {
    return 'hold';
  }
  return null;
}

// The server's answer as the quirks change it.
export function afterRouter(quirks, { method, path, origin }, reply) {
  const bundleAnswer = method === 'POST' && path === '' && reply.status === 200;
  if (quirks.unreadableBundle && bundleAnswer) {
    if (quirks.unreadableBundle === 'empty') {
      return { ...reply, text: '' };
    }
    if (quirks.unreadableBundle === 'invalid') {
      return { ...reply, text: reply.text.slice(0, Math.floor(reply.text.length / 2)) };
    }
    const bundle = JSON.parse(reply.text);
    bundle.entry = (bundle.entry ?? []).slice(0, -1);
    return { ...reply, text: JSON.stringify(bundle) };
  }
  const ok = reply.status >= 200 && reply.status < 300;
  if (quirks.noLocation && ok) {
    const headers = { ...reply.headers };
    delete headers.location;
    if (bundleAnswer) {
      const bundle = JSON.parse(reply.text);
      for (const entry of bundle.entry ?? []) {
        delete entry.resource;
        delete entry.response?.location;
      }
      return { ...reply, headers, text: JSON.stringify(bundle) };
    }
    return isWrite(method, path) ? { ...reply, headers, text: '' } : { ...reply, headers };
  }
  if (quirks.oddLocation && ok) {
    const headers = { ...reply.headers };
    const found = /\/fhir\/([A-Za-z]+)\/([^/]+)/.exec(headers.location ?? '');
    if (found) {
      headers.location = `${origin}/fhir/${found[1]}/${found[2]}?_format=json?_format=json`;
    }
    if (bundleAnswer) {
      const bundle = JSON.parse(reply.text);
      for (const entry of bundle.entry ?? []) {
        if (entry.response?.location) {
          entry.response.location += '?_format=json?_format=json';
        }
      }
      return { ...reply, headers, text: JSON.stringify(bundle) };
    }
    return isWrite(method, path) ? { ...reply, headers, text: '' } : { ...reply, headers };
  }
  if (quirks.pageSize && ok && reply.text.includes('"searchset"')) {
    const bundle = JSON.parse(reply.text);
    if (bundle.type === 'searchset' && (bundle.entry ?? []).length > quirks.pageSize) {
      const id = randomUUID();
      pages.set(id, bundle.entry);
      return { ...reply, text: JSON.stringify(page(id, 0, quirks.pageSize, origin)) };
    }
  }
  return reply;
}

function page(id, offset, size, origin) {
  const entries = pages.get(id) ?? [];
  const bundle = { resourceType: 'Bundle', type: 'searchset', total: entries.length, entry: entries.slice(offset, offset + size) };
  if (offset + size < entries.length) {
    bundle.link = [{ relation: 'next', url: `${origin}/fhir?_getpages=${id}&_getpagesoffset=${offset + size}&_count=${size}` }];
  }
  return bundle;
}

// A page of a search kept on the server (GET [base]?_getpages=...), or null.
export function pageOf(url) {
  const id = url.searchParams.get('_getpages');
  if (!id) {
    return null;
  }
  if (!pages.has(id)) {
    return outcome(410, 'this search has expired');
  }
  const offset = Number(url.searchParams.get('_getpagesoffset') ?? 0);
  const size = Number(url.searchParams.get('_count') ?? 10);
  return { status: 200, headers: { ...FHIR_JSON }, text: JSON.stringify(page(id, offset, size, url.origin)) };
}

// Write the answer as the quirks say: at once, a byte at a time, cut short, or far too large.
export function writeAnswer(res, reply, quirks) {
  if (quirks.hugeBody) {
    res.writeHead(200, { ...FHIR_JSON });
    const filler = Buffer.alloc(65536, 0x20);
    let written = 0;
    res.write('{"resourceType":"Bundle","type":"searchset","entry":[');
    const more = () => {
      while (written < quirks.hugeBody && !res.destroyed) {
        written += filler.length;
        if (!res.write(filler)) {
          res.once('drain', more);
          return;
        }
      }
      res.end(']}');
    };
    res.on('error', () => {});
    more();
    return;
  }
  if (quirks.cutShort) {
    res.writeHead(reply.status, reply.headers);
    res.write(reply.text.slice(0, Math.max(1, Math.floor(reply.text.length / 2))));
    setTimeout(() => res.socket?.destroy(), 20);
    return;
  }
  const body = Buffer.from(reply.text);
  res.writeHead(reply.status, { ...reply.headers, 'content-length': String(body.length) });
  if (!quirks.trickle) {
    res.end(body);
    return;
  }
  let at = 0;
  const timer = setInterval(() => {
    if (res.destroyed || at >= body.length) {
      clearInterval(timer);
      res.end();
      return;
    }
    res.write(body.subarray(at, at + 1));
    at += 1;
  }, quirks.trickle);
}
