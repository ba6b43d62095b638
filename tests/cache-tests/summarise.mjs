#!/usr/bin/env node
// Summarises one run of the HTTP caching test suite (cache-tests.fyi, npm http-cache-tests)
// and, with --known, checks it against the known-failures list.
//
// Usage:
//   node tests/cache-tests/summarise.mjs --results target/cache-tests/results-outpost.json
//        [--suite target/cache-tests/node_modules/http-cache-tests]
//        [--known tests/cache-tests/known-failures.txt [--update]] [--quiet]
//
// A test's outcome is classified the way cache-tests.fyi shows it (lib/display.mjs
// determineTestResult, which needs a browser, so it is restated here): a test whose
// depends_on tests did not pass is a dependency failure whatever its own result; a
// "Setup" error is a setup failure (or a retry); otherwise required tests pass/fail,
// optimal tests pass/optional-fail and check tests answer yes/no.
//
// "Not passing" (what the known-failures list holds) is every test that ran and is not
// shown as pass or yes: fail, optional fail, no, setup, retry, dependency and harness
// failures. Tests the run skipped (browser-only ones) are neither.
//
// Exit status: 0 summary printed (and, with --known, the run matches the list exactly);
// 1 with --known: a test not on the list does not pass, or a listed test now passes;
// 2 usage error or unreadable input.
import fs from 'fs'
import path from 'path'
import { fileURLToPath, pathToFileURL } from 'url'

const here = path.dirname(fileURLToPath(import.meta.url))
const repoRoot = path.resolve(here, '..', '..')

function usage (msg) {
  if (msg) console.error(`summarise: ${msg}`)
  console.error('usage: summarise.mjs --results FILE [--suite DIR] [--known FILE [--update]] [--quiet]')
  process.exit(2)
}

const opts = {
  results: null,
  suite: path.join(repoRoot, 'target', 'cache-tests', 'node_modules', 'http-cache-tests'),
  known: null,
  update: false,
  quiet: false
}
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const value = () => {
    if (i + 1 >= argv.length) usage(`${a} needs a value`)
    return argv[++i]
  }
  if (a === '--results') opts.results = value()
  else if (a === '--suite') opts.suite = value()
  else if (a === '--known') opts.known = value()
  else if (a === '--update') opts.update = true
  else if (a === '--quiet') opts.quiet = true
  else if (a === '-h' || a === '--help') usage()
  else usage(`unknown argument ${a}`)
}
if (!opts.results) usage('--results is required')
if (opts.update && !opts.known) usage('--update needs --known FILE')

// ---- load the suite's test metadata (the same list cli.mjs runs) ----
async function loadSuite (dir) {
  const imp = f => import(pathToFileURL(path.join(dir, 'tests', f)).href).then(m => m.default)
  let index, surrogate
  try {
    index = await imp('index.mjs')
    surrogate = await imp('surrogate-control.mjs')
  } catch (e) {
    console.error(`summarise: cannot load the suite's tests from ${dir}: ${e.message}`)
    console.error('summarise: run tests/cache-tests/run.sh once (it installs the suite), or pass --suite')
    process.exit(2)
  }
  const suites = [...index]
  if (!suites.includes(surrogate)) suites.push(surrogate) // cli.mjs runs it too
  let version = 'unknown'
  try {
    version = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version
  } catch (e) {}
  return { suites, version }
}

const { suites, version } = await loadSuite(opts.suite)
const tests = new Map() // id -> { test, suite }
for (const suite of suites) {
  for (const test of suite.tests) tests.set(test.id, { test, suite })
}

let results
try {
  results = JSON.parse(fs.readFileSync(opts.results, 'utf8'))
} catch (e) {
  console.error(`summarise: cannot read results ${opts.results}: ${e.message}`)
  process.exit(2)
}
if (results === null || typeof results !== 'object' || Array.isArray(results)) {
  console.error(`summarise: ${opts.results} is not a results object`)
  process.exit(2)
}
const unknownIds = Object.keys(results).filter(id => !tests.has(id))
if (unknownIds.length) {
  console.error(`summarise: warning: ${opts.results} has ids this suite (${version}) does not: ${unknownIds.slice(0, 5).join(', ')}` +
    `${unknownIds.length > 5 ? ', ...' : ''} (results from another suite version?); ignoring them`)
}

// ---- classify (restates http-cache-tests lib/display.mjs determineTestResult) ----
const PASSING = new Set(['pass', 'yes'])
const memo = new Map()
function classify (id, seen = new Set()) {
  if (memo.has(id)) return memo.get(id)
  const entry = tests.get(id)
  const result = results[id]
  let out
  if (result === undefined) {
    out = 'untested'
  } else if (entry.test.depends_on && entry.test.depends_on.some(dep => {
    if (seen.has(dep)) return true // a dependency cycle never passes
    return !PASSING.has(classify(dep, new Set([...seen, id])))
  })) {
    out = 'dependency_fail'
  } else if (Array.isArray(result) && result[0] === 'Setup') {
    out = result[1] === 'retry' ? 'retry' : 'setup_fail'
  } else if (result !== true && !(Array.isArray(result) && result[0] === 'Assertion')) {
    out = 'harness_fail'
  } else {
    const kind = entry.test.kind || 'required'
    if (kind === 'required') out = result === true ? 'pass' : 'fail'
    else if (kind === 'optimal') out = result === true ? 'pass' : 'optional_fail'
    else if (kind === 'check') out = result === true ? 'yes' : 'no'
    else out = 'harness_fail'
  }
  memo.set(id, out)
  return out
}

const KINDS = ['required', 'optimal', 'check']
const counts = {}
for (const k of KINDS) counts[k] = { total: 0, passed: 0, failed: 0, setup: 0, dependency: 0, harness: 0, untested: 0 }
const notPassing = [] // ids in suite order
const passing = new Set()
for (const [id, { test }] of tests) {
  const kind = test.kind || 'required'
  const c = counts[kind] || (counts[kind] = { total: 0, passed: 0, failed: 0, setup: 0, dependency: 0, harness: 0, untested: 0 })
  const cls = classify(id)
  c.total++
  if (cls === 'untested') { c.untested++; continue }
  if (PASSING.has(cls)) { c.passed++; passing.add(id); continue }
  notPassing.push(id)
  if (cls === 'fail' || cls === 'optional_fail' || cls === 'no') c.failed++
  else if (cls === 'setup_fail' || cls === 'retry') c.setup++
  else if (cls === 'dependency_fail') c.dependency++
  else c.harness++
}

function detail (id) {
  if (classify(id) === 'dependency_fail') {
    const deps = tests.get(id).test.depends_on.filter(dep => !PASSING.has(classify(dep)))
    return `depends on ${deps.join(', ')}, not passing`
  }
  const r = results[id]
  return Array.isArray(r) ? `${r[0]}: ${r[1]}` : (r === true ? 'ok' : String(r))
}
function oneLine (s, n = 110) {
  s = String(s).replace(/\s+/g, ' ').replace(/`/g, '')
  return s.length > n ? s.slice(0, n - 1) + '…' : s
}

const log = opts.quiet ? () => {} : (...a) => console.log(...a)
const label = path.basename(opts.results).replace(/^results-/, '').replace(/\.json$/, '')
log(`== HTTP cache tests: ${label} (http-cache-tests ${version}, ${Object.keys(results).length} of ${tests.size} tests run)`)
log('kind       tests  pass  fail setup  deps  harn  skip')
for (const k of Object.keys(counts)) {
  const c = counts[k]
  log(`${k.padEnd(9)} ${String(c.total).padStart(6)} ${String(c.passed).padStart(5)} ${String(c.failed).padStart(5)}` +
    ` ${String(c.setup).padStart(5)} ${String(c.dependency).padStart(5)} ${String(c.harness).padStart(5)} ${String(c.untested).padStart(5)}`)
}
log('(fail = failed / optimal not met / check answered no; setup = setup failure or retry;')
log(' deps = a depends_on test did not pass; harn = harness error; skip = not run, browser-only)')
const req = counts.required
log(`required: ${req.passed} pass, ${req.failed} fail (red on cache-tests.fyi), ${req.setup + req.dependency + req.harness} setup/dependency/harness failures, ${req.untested} not run`)

const failingRequired = notPassing.filter(id => (tests.get(id).test.kind || 'required') === 'required')
if (failingRequired.length) {
  log(`\nFailing required tests (${failingRequired.length}):`)
  for (const id of failingRequired) {
    log(`  ${id.padEnd(42)} [${classify(id)}] ${oneLine(detail(id), 90)}`)
  }
}

// ---- stale-while-revalidate / stale-if-error ----
function matching (re) {
  return [...tests.values()].filter(({ test }) => re.test(test.id) || re.test(test.name)).map(({ test }) => test.id)
}
for (const [name, re] of [['stale-while-revalidate', /stale-while-revalidate|(^|-)swr(-|$)/i], ['stale-if-error', /stale-if-error|(^|-)sie(-|$)/i]]) {
  const ids = matching(re)
  if (ids.length === 0) {
    log(`\n${name}: no tests in http-cache-tests ${version}`)
    continue
  }
  const ran = ids.filter(id => classify(id) !== 'untested')
  const ok = ran.filter(id => passing.has(id))
  log(`\n${name}: ${ok.length === ran.length && ran.length ? 'PASS' : 'NOT PASSING'} (${ok.length}/${ran.length})`)
  for (const id of ids) log(`  ${id.padEnd(42)} [${tests.get(id).test.kind || 'required'}] ${classify(id)}`)
}

if (!opts.known) process.exit(0)

// ---- known failures ----
// Format: one test id per line; '#' starts a comment. "id  # reason: why" gives the reason.
// Comment lines before the first id (the file's header) are kept by --update.
function readKnown (file) {
  const ids = new Map() // id -> reason text ('' if none)
  const header = []
  let text = ''
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (e) {
    if (!(opts.update && e.code === 'ENOENT')) {
      console.error(`summarise: cannot read ${file}: ${e.message}`)
      process.exit(2)
    }
  }
  let inHeader = true
  const dups = []
  for (const raw of text.split('\n')) {
    const hash = raw.indexOf('#')
    const idPart = (hash >= 0 ? raw.slice(0, hash) : raw).trim()
    const comment = hash >= 0 ? raw.slice(hash + 1).trim() : ''
    if (!idPart) {
      if (inHeader && !comment.startsWith('--- ')) header.push(raw)
      continue
    }
    inHeader = false
    if (/\s/.test(idPart)) {
      console.error(`summarise: ${file}: one test id per line, got "${idPart}"`)
      process.exit(2)
    }
    if (ids.has(idPart)) dups.push(idPart)
    ids.set(idPart, comment)
  }
  while (header.length && header[header.length - 1].trim() === '') header.pop()
  return { ids, header, dups }
}

const known = readKnown(opts.known)

if (opts.update) {
  const byKind = new Map()
  for (const id of notPassing) {
    const kind = tests.get(id).test.kind || 'required'
    if (!byKind.has(kind)) byKind.set(kind, [])
    byKind.get(kind).push(id)
  }
  const lines = known.header.length
    ? [...known.header]
    : ['# Tests of the HTTP caching test suite (http-cache-tests) that Outpost does not pass.',
        '# One test id per line; "# reason: ..." says why. See tests/cache-tests/README.md.',
        '# Rewrite from the latest results with: scripts/cache-tests.sh --update']
  const width = Math.max(0, ...notPassing.map(id => id.length)) + 2
  for (const kind of [...KINDS, ...[...byKind.keys()].filter(k => !KINDS.includes(k))]) {
    const ids = byKind.get(kind)
    if (!ids) continue
    lines.push('', `# --- ${kind} (${ids.length}) ---`)
    for (const id of ids) {
      const reason = known.ids.get(id) || 'reason: TODO'
      lines.push(`${id.padEnd(width)}# ${reason}`)
    }
  }
  fs.writeFileSync(opts.known, lines.join('\n') + '\n')
  const added = notPassing.filter(id => !known.ids.has(id))
  const removed = [...known.ids.keys()].filter(id => !notPassing.includes(id))
  console.log(`\nknown failures: wrote ${opts.known}: ${notPassing.length} tests (${added.length} added, ${removed.length} removed)`)
  process.exit(0)
}

const unexpectedFail = notPassing.filter(id => !known.ids.has(id))
const unexpectedPass = [...known.ids.keys()].filter(id => passing.has(id))
const notInSuite = [...known.ids.keys()].filter(id => !tests.has(id))
const notRun = [...known.ids.keys()].filter(id => tests.has(id) && classify(id) === 'untested')
let bad = false
console.log(`\nknown failures (${opts.known}): ${known.ids.size} listed, ${notPassing.length} not passing in this run`)
if (unexpectedFail.length) {
  bad = true
  console.log(`NEW FAILURES (not in the list; fix them or add them with a reason) (${unexpectedFail.length}):`)
  for (const id of unexpectedFail) {
    console.log(`  ${id.padEnd(42)} [${tests.get(id).test.kind || 'required'}/${classify(id)}] ${oneLine(detail(id), 80)}`)
  }
}
if (unexpectedPass.length) {
  bad = true
  console.log(`NOW PASSING (remove them from the list) (${unexpectedPass.length}):`)
  for (const id of unexpectedPass) console.log(`  ${id}`)
}
if (notInSuite.length) {
  bad = true
  console.log(`NOT IN THE SUITE ${version} (remove them from the list) (${notInSuite.length}):`)
  for (const id of notInSuite) console.log(`  ${id}`)
}
if (notRun.length) {
  bad = true
  console.log(`LISTED BUT NOT RUN (browser-only?; remove them from the list) (${notRun.length}):`)
  for (const id of notRun) console.log(`  ${id}`)
}
if (known.dups.length) {
  bad = true
  console.log(`LISTED TWICE: ${known.dups.join(', ')}`)
}
if (bad) {
  console.log('cache-tests: FAIL: the results differ from the known-failures list (rewrite it with --update once the change is intended)')
  process.exit(1)
}
console.log('cache-tests: OK: the results match the known-failures list')
