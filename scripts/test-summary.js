#!/usr/bin/env node
// Adds up vitest JSON reports (one per matrix setting) into one plain closing line.
'use strict';
const fs = require('fs');
let passed = 0, failed = 0, skipped = 0;
for (const f of process.argv.slice(2)) {
  if (!fs.existsSync(f)) { failed++; continue; }  // a run that wrote no report failed
  const r = JSON.parse(fs.readFileSync(f, 'utf8'));
  passed += r.numPassedTests;
  failed += r.numFailedTests;
  skipped += r.numPendingTests;
}
console.log(`tests: ${passed} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ''));
