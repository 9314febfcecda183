#!/usr/bin/env node
// Compile contracts/src with the pinned solc-js and write the artefacts the Python side loads.
//
//   node contracts/build.js            write contracts/artifacts/<Name>.json
//   node contracts/build.js --check    compile afresh and fail if the committed artefacts differ
//   node contracts/build.js --out DIR  write to DIR instead
//
// Why committed artefacts: the bridge must not need a compiler (or node) at import time, and a
// reviewer can diff the ABI of a change. Why the --check mode: the test suite runs it, so the
// committed files can never drift from the sources. Everything that affects the bytecode is pinned
// here: compiler (package-lock.json), EVM version, optimizer, and source unit names that do not
// depend on where the checkout lives (so the metadata hash, and therefore the bytecode, is
// reproducible on any machine).
'use strict';

const fs = require('fs');
const path = require('path');

const CONTRACTS_DIR = __dirname;
const REPO_ROOT = path.resolve(CONTRACTS_DIR, '..');
const SRC_DIR = path.join(CONTRACTS_DIR, 'src');
const OZ_PREFIX = '@openzeppelin/contracts/';
const OZ_DIR = path.join(REPO_ROOT, 'node_modules', '@openzeppelin', 'contracts');

const solc = require(require.resolve('solc', { paths: [REPO_ROOT] }));
const EXPECTED_SOLC = '0.8.30+commit.73712a01';
const EVM_VERSION = 'cancun';
const OPTIMIZER = { enabled: true, runs: 200 };
// The deployable contracts and the source unit each lives in.
const TARGETS = {
  WrappedAsset: 'src/WrappedAsset.sol',
  Gateway: 'src/Gateway.sol',
  SettlementEscrow: 'src/SettlementEscrow.sol',
  SettlementCheckpoints: 'src/SettlementCheckpoints.sol',
};

function fail(msg) {
  process.stderr.write(`build.js: ${msg}\n`);
  process.exit(1);
}

function listSolidity(dir, prefix) {
  const out = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const rel = `${prefix}/${entry.name}`;
    if (entry.isDirectory()) out.push(...listSolidity(path.join(dir, entry.name), rel));
    else if (entry.name.endsWith('.sol')) out.push(rel);
  }
  return out;
}

function inside(file, dir) {
  const rel = path.relative(dir, file);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}

// Source unit names are "src/..." (relative to contracts/) and "@openzeppelin/contracts/...".
function findImports(name) {
  let file;
  if (name.startsWith(OZ_PREFIX)) file = path.join(OZ_DIR, name.slice(OZ_PREFIX.length));
  else file = path.join(CONTRACTS_DIR, name);
  if (!(inside(file, OZ_DIR) || inside(file, SRC_DIR))) return { error: `import outside allowed roots: ${name}` };
  try {
    return { contents: fs.readFileSync(file, 'utf8') };
  } catch (_) {
    return { error: `not found: ${name}` };
  }
}

function compile() {
  const version = solc.version();
  if (!version.startsWith(EXPECTED_SOLC)) fail(`solc-js is ${version}, expected ${EXPECTED_SOLC} (run make setup)`);
  const sources = {};
  for (const unit of listSolidity(SRC_DIR, 'src')) {
    sources[unit] = { content: fs.readFileSync(path.join(CONTRACTS_DIR, unit), 'utf8') };
  }
  const input = {
    language: 'Solidity',
    sources,
    settings: {
      evmVersion: EVM_VERSION,
      optimizer: OPTIMIZER,
      outputSelection: {
        '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object', 'storageLayout'] },
      },
    },
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  // Errors anywhere and warnings in our own sources fail the build. OpenZeppelin's only warning is
  // solc's generic note on `tstore` in TransientSlot, which its reentrancy guard uses in exactly the
  // way the note calls safe (cleared at the end of the call).
  const ours = (e) => !(e.sourceLocation && e.sourceLocation.file.startsWith(OZ_PREFIX));
  const problems = (output.errors || []).filter(
    (e) => e.severity === 'error' || (e.severity === 'warning' && ours(e)),
  );
  if (problems.length) fail(`compiler reported:\n${problems.map((e) => e.formattedMessage).join('\n')}`);

  const artefacts = {};
  for (const [name, unit] of Object.entries(TARGETS)) {
    const c = output.contracts[unit] && output.contracts[unit][name];
    if (!c) fail(`no output for ${unit}:${name}`);
    const layout = c.storageLayout.storage.map((s) => ({
      slot: Number(s.slot),
      offset: s.offset,
      label: s.label,
      type: c.storageLayout.types[s.type].label,
      contract: s.contract,
    }));
    artefacts[name] = {
      contractName: name,
      sourceName: unit,
      compiler: { solc: version, evmVersion: EVM_VERSION, optimizer: OPTIMIZER },
      abi: c.abi,
      bytecode: `0x${c.evm.bytecode.object}`,
      deployedBytecode: `0x${c.evm.deployedBytecode.object}`,
      storageLayout: layout,
    };
  }
  return artefacts;
}

function serialise(artefact) {
  return `${JSON.stringify(artefact, null, 2)}\n`;
}

function main() {
  const args = process.argv.slice(2);
  const check = args.includes('--check');
  const outIdx = args.indexOf('--out');
  const outDir = outIdx >= 0 ? path.resolve(args[outIdx + 1]) : path.join(CONTRACTS_DIR, 'artifacts');
  const artefacts = compile();

  if (check) {
    const stale = [];
    for (const [name, artefact] of Object.entries(artefacts)) {
      const file = path.join(outDir, `${name}.json`);
      const committed = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : null;
      if (committed !== serialise(artefact)) stale.push(path.relative(REPO_ROOT, file));
    }
    const expected = new Set(Object.keys(artefacts).map((n) => `${n}.json`));
    const extra = fs.existsSync(outDir) ? fs.readdirSync(outDir).filter((f) => f.endsWith('.json') && !expected.has(f)) : [];
    if (stale.length || extra.length) {
      fail(
        `artefacts are stale (run: node contracts/build.js):\n` +
          [...stale.map((f) => `  differs: ${f}`), ...extra.map((f) => `  unexpected: ${f}`)].join('\n'),
      );
    }
    process.stdout.write(`artefacts up to date (${Object.keys(artefacts).join(', ')})\n`);
    return;
  }

  fs.mkdirSync(outDir, { recursive: true });
  for (const [name, artefact] of Object.entries(artefacts)) {
    fs.writeFileSync(path.join(outDir, `${name}.json`), serialise(artefact));
  }
  process.stdout.write(`wrote ${Object.keys(artefacts).length} artefacts to ${path.relative(REPO_ROOT, outDir) || '.'}\n`);
}

main();
