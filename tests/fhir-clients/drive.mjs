// Drives FHIR clients no one here wrote against the running service, for the test suite.
// Takes one JSON job as its argument and prints one JSON answer on stdout:
//   {"client": "fhir-kit-client" | "medplum", "task": ..., "base": "http://127.0.0.1:PORT", ...}
// Tasks:
//   walk     from `Patient?identifier=<mrn>`, search each type by patient to the last page,
//            then resolve every reference of every resource through the client's own reference
//            handling (fhir-kit-client's `resolve`, Medplum's `readReference`)
//   history  (fhir-kit-client) `GET <type>/_history?_count=<count>`, then `nextPage` to the end
//   export   Bulk Data export of the patients, polled to the manifest, each file fetched: Medplum's
//            `bulkExport`; fhir-kit-client's `operation` kick-off, polled with its `request`
//   discover (fhir-kit-client) `smartAuthMetadata`: where the token endpoint is
// Authentication: fhir-kit-client takes the bearer token it is given (it has no login of its
// own); Medplum logs in with `startJwtAssertionLogin` and the signed client assertion it is given.
import { Client, RESPONSE_KEY } from 'fhir-kit-client';
import { MedplumClient } from '@medplum/core';

const PATIENT_PARAM = {
  Encounter: 'patient',
  CarePlan: 'patient',
  Procedure: 'patient',
  Observation: 'patient',
  MedicationAdministration: 'patient',
  AdverseEvent: 'subject',
  DetectedIssue: 'patient',
  DocumentReference: 'patient',
};

// Every Reference in a resource (an object with a string `reference`), with the resource that
// holds it: a contained resource's references are read against their container.
function references(resource, container = resource) {
  const found = [];
  const walk = (value) => {
    if (Array.isArray(value)) {
      value.forEach(walk);
    } else if (value && typeof value === 'object') {
      if (typeof value.reference === 'string') {
        found.push({ reference: value.reference, container });
      }
      for (const [key, inner] of Object.entries(value)) {
        if (key !== 'contained') walk(inner);
      }
    }
  };
  walk(resource);
  for (const contained of resource.contained ?? []) {
    found.push(...references(contained, container));
  }
  return found;
}

function typeOf(reference, container) {
  if (reference === '#') return container.resourceType;
  if (reference.startsWith('#')) {
    return (container.contained ?? []).find((r) => `#${r.id}` === reference)?.resourceType;
  }
  return reference.split('/').at(-2);
}

async function collect(search, next) {
  const resources = [];
  const pages = [];
  let bundle = await search();
  while (bundle) {
    pages.push((bundle.entry ?? []).length);
    for (const entry of bundle.entry ?? []) {
      if (entry.search?.mode !== 'outcome') resources.push(entry.resource);
    }
    bundle = bundle.link?.some((l) => l.relation === 'next') ? await next(bundle) : undefined;
  }
  return { resources, pages };
}

async function walk(job, searchAll, resolve) {
  const patients = await searchAll('Patient', { identifier: job.mrn });
  if (patients.resources.length !== 1) {
    return { error: `Patient?identifier=${job.mrn} found ${patients.resources.length}` };
  }
  const patient = patients.resources[0];
  const everything = [patient];
  const counts = {};
  const pages = {};
  for (const [type, param] of Object.entries(PATIENT_PARAM)) {
    const found = await searchAll(type, { [param]: `Patient/${patient.id}`, _count: job.count ?? 20 });
    counts[type] = found.resources.length;
    pages[type] = found.pages.length;
    everything.push(...found.resources);
  }
  const resolved = {};
  const failures = [];
  let total = 0;
  for (const resource of everything) {
    for (const { reference, container } of references(resource)) {
      total += 1;
      try {
        const target = await resolve(reference, container);
        const expected = typeOf(reference, container);
        if (!target || target.resourceType !== expected) {
          failures.push(`${resource.resourceType}: ${reference} gave ${target?.resourceType}`);
        } else {
          resolved[target.resourceType] = (resolved[target.resourceType] ?? 0) + 1;
        }
      } catch (error) {
        failures.push(`${resource.resourceType}: ${reference}: ${error.message ?? error}`);
      }
    }
  }
  const ids = everything.map((r) => `${r.resourceType}/${r.id}`);
  return {
    patient: patient.id,
    counts,
    pages,
    references: total,
    resolved,
    failures,
    repeated: ids.length - new Set(ids).size,
  };
}

async function fhirKit(job) {
  const client = new Client({
    baseUrl: `${job.base}/fhir`,
    customHeaders: { Authorization: `Bearer ${job.token}` },
  });
  const searchAll = (resourceType, searchParams) =>
    collect(
      () => client.search({ resourceType, searchParams }),
      (bundle) => client.nextPage({ bundle }),
    );
  if (job.task === 'walk') {
    // A contained resource's `#` is its container; fhir-kit-client resolves `#id` in a context.
    const resolve = (reference, container) =>
      reference === '#' ? container : client.resolve({ reference, context: reference.startsWith('#') ? container : undefined });
    return walk(job, searchAll, resolve);
  }
  if (job.task === 'history') {
    const history = await collect(
      // typeHistory takes no parameters: the first page is asked for by URL, the rest by nextPage.
      () => client.request(`${job.type}/_history?_count=${job.count}`),
      (bundle) => client.nextPage({ bundle }),
    );
    const versions = history.resources.map((r) => `${r.id}/${r.meta.versionId}`);
    return { versions: versions.length, distinct: new Set(versions).size, pages: history.pages.length };
  }
  if (job.task === 'discover') {
    const found = await client.smartAuthMetadata();
    return { tokenUrl: String(found.tokenUrl) };
  }
  if (job.task === 'export') {
    const kickOff = await client.operation({
      name: 'export',
      resourceType: 'Patient',
      method: 'GET',
      options: { headers: { prefer: 'respond-async' } },
    });
    const status = kickOff[RESPONSE_KEY].headers.get('content-location');
    let manifest;
    for (let polls = 0; polls < 600 && !manifest; polls += 1) {
      const answer = await client.request(status);
      if (answer[RESPONSE_KEY].status === 200) {
        manifest = answer;
      } else {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    // NDJSON is not JSON: fhir-kit-client cannot read a file; each is fetched with the token.
    const lines = {};
    for (const output of manifest?.output ?? []) {
      const file = await fetch(output.url, { headers: { authorization: `Bearer ${job.token}` } });
      const rows = (await file.text()).split('\n').filter((line) => line.trim());
      lines[output.type] = (lines[output.type] ?? 0) + rows.length;
    }
    return { requiresAccessToken: manifest?.requiresAccessToken, lines };
  }
  throw new Error(`fhir-kit-client: no task ${job.task}`);
}

async function medplum(job) {
  const client = new MedplumClient({
    baseUrl: job.base,
    fhirUrlPath: 'fhir',
    tokenUrl: job.tokenUrl,
    clientId: job.clientId,
    cacheTime: 0,
  });
  await client.startJwtAssertionLogin(job.assertion);
  const login = { loggedIn: Boolean(client.getAccessToken()) };
  if (job.task === 'login') {
    const read = await client.search('Patient', { identifier: job.mrn });
    return { ...login, found: (read.entry ?? []).length };
  }
  if (job.task === 'walk') {
    const searchAll = async (type, params) => {
      const resources = [];
      const pages = [];
      for await (const page of client.searchResourcePages(type, params)) {
        pages.push(page.length);
        resources.push(...page);
      }
      return { resources, pages };
    };
    // Medplum reads `Type/id` references; a contained one is looked up in its container.
    const resolve = async (reference, container) => {
      if (reference === '#') return container;
      if (reference.startsWith('#')) {
        return (container.contained ?? []).find((r) => `#${r.id}` === reference);
      }
      return client.readReference({ reference });
    };
    return { ...login, ...(await walk(job, searchAll, resolve)) };
  }
  if (job.task === 'export') {
    const manifest = await client.bulkExport('Patient', job.types, undefined, {
      pollStatusOnAccepted: true,
      pollStatusPeriod: 200,
    });
    const lines = {};
    for (const output of manifest.output ?? []) {
      const blob = await client.download(output.url);
      const text = await blob.text();
      const rows = text.split('\n').filter((line) => line.trim());
      lines[output.type] = (lines[output.type] ?? 0) + rows.length;
    }
    return { ...login, requiresAccessToken: manifest.requiresAccessToken, lines };
  }
  throw new Error(`medplum: no task ${job.task}`);
}

const job = JSON.parse(process.argv[2]);
try {
  const answer = job.client === 'medplum' ? await medplum(job) : await fhirKit(job);
  process.stdout.write(JSON.stringify(answer) + '\n');
} catch (error) {
  process.stdout.write(JSON.stringify({ error: String(error?.message ?? error), outcome: error?.outcome }) + '\n');
}
