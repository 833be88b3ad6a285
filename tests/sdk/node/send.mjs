// Sends a fixed sequence of events with the real posthog-node client.
// Usage: node send.mjs HOST TOKEN RUN_ID GZIP(0|1)
import { PostHog } from 'posthog-node'

const [host, token, run, gzip] = process.argv.slice(2)
const anon = `anon-${run}`
const user = `user-${run}`
let failed = false
const client = new PostHog(token, {
  host,
  flushAt: 50,
  flushInterval: 0,
  fetchRetryCount: 0,
  disableCompression: gzip !== '1',
  disableGeoip: true,
})
client.on('error', (err) => {
  failed = true
  console.error('posthog-node error:', err)
})
client.capture({ distinctId: anon, event: 'sdk test event', properties: { run, n: 1, $set_once: { first_seen_run: run } } })
client.identify({ distinctId: user, properties: { $anon_distinct_id: anon, plan: 'pro' } })
client.alias({ distinctId: user, alias: anon })
client.groupIdentify({ groupType: 'company', groupKey: `acme-${run}`, properties: { name: 'Acme' }, distinctId: user })
client.capture({ distinctId: user, event: 'grouped', groups: { company: `acme-${run}` }, properties: { run } })
await client.shutdown()
process.exit(failed ? 1 : 0)
