// Traffic for the chaos run (bench/chaos.py) from the real posthog-node client.
// Usage: node chaos.mjs HOST TOKEN PREFIX COUNT RATE OUT
// Sends COUNT events at RATE per second over 100 distinct ids of PREFIX, with an identify
// for every tenth id, and writes {sent: [uuid...], acked: [uuid...]} to OUT. An event is
// acknowledged when a request that carried it got 200 (the SDK retries failed requests).
import { writeFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'
import { PostHog } from 'posthog-node'

const [host, token, prefix, count, rate, out] = process.argv.slice(2)
const sent = []
const acked = new Set()
let errors = 0

async function recordingFetch(url, options) {
  const response = await fetch(url, options)
  if (response.status === 200 && typeof options.body === 'string') {
    try {
      for (const e of JSON.parse(options.body).batch ?? []) if (e.uuid) acked.add(e.uuid)
    } catch {}
  }
  return response
}

const client = new PostHog(token, {
  host,
  flushAt: 50,
  flushInterval: 200,
  fetchRetryCount: 10,
  fetchRetryDelay: 500,
  requestTimeout: 10000,
  disableCompression: true,
  disableGeoip: true,
  maxQueueSize: 100000,
  fetch: recordingFetch,
})
client.on('error', () => {
  errors += 1
})

// Stopped from outside (the run gave up waiting): still say what was sent and acknowledged.
const report = () => writeFileSync(out, JSON.stringify({ sent, acked: [...acked], errors }))
process.on('SIGTERM', () => {
  report()
  process.exit(0)
})

const started = Date.now()
for (let i = 0; i < Number(count); i++) {
  const k = i % 100
  const anon = `${prefix}-anon-${k}`
  const uuid = randomUUID()
  sent.push(uuid)
  if (k % 10 === 0 && i >= 100 && i < 200) {
    client.capture({ distinctId: `${prefix}-user-${k}`, event: '$identify', uuid, properties: { $anon_distinct_id: anon } })
  } else {
    client.capture({ distinctId: anon, event: 'chaos node', uuid, properties: { i, $set: { last: i } } })
  }
  const due = started + ((i + 1) * 1000) / Number(rate)
  const wait = due - Date.now()
  if (wait > 0) await new Promise((r) => setTimeout(r, wait))
}
await client.shutdown(120000)
report()
