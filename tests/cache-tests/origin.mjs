// Starts the suite's own origin server (http-cache-tests/server/server.mjs) bound to loopback.
//
// The suite's server calls `server.listen(port)`, which binds every interface; this wrapper
// makes that listen on 127.0.0.1 only, then loads the server unchanged. It reads the same
// settings the suite's `npm run server` passes through the environment:
//   npm_config_port, npm_config_protocol (http), npm_config_pidfile.
// Usage: CACHE_TESTS_DIR=<node_modules/http-cache-tests> node origin.mjs
import http from 'http'
import path from 'path'
import { pathToFileURL } from 'url'

const suiteDir = process.env.CACHE_TESTS_DIR
if (!suiteDir) {
  console.error('origin.mjs: set CACHE_TESTS_DIR to the installed http-cache-tests package')
  process.exit(2)
}

const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (...args) {
  if (args.length === 1 && (typeof args[0] === 'number' || typeof args[0] === 'string')) {
    return listen.call(this, Number(args[0]), '127.0.0.1')
  }
  return listen.apply(this, args)
}

await import(pathToFileURL(path.join(suiteDir, 'server', 'server.mjs')).href)
