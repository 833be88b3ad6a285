// Sends events with the real posthog-node client.
// Usage: node send.mjs HOST TOKEN RUN_ID GZIP(0|1) [STEP]
// Without STEP: a fixed sequence (an event, identify, alias, group identify, a grouped
// event) as anon-RUN / user-RUN. With STEP: one step of the person story of
// tests/tests/ingest_persons.rs (see steps).
import { PostHog } from 'posthog-node'

const [host, token, run, gzip, step] = process.argv.slice(2)
const anon = `anon-${run}`
const user = `user-${run}`
const [a2, u2, a3, u3] = ['a2', 'u2', 'a3', 'u3'].map((p) => `${p}-${run}`)
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

const steps = {
  set: () =>
    client.capture({
      distinctId: a2,
      event: 'settings',
      properties: { $set: { plan: 'free', color: 'red' }, $set_once: { source: 'ads' } },
    }),
  update: () =>
    client.capture({
      distinctId: a2,
      event: 'settings',
      properties: { $set: { plan: 'pro' }, $set_once: { source: 'other' }, $unset: ['color'] },
    }),
  identify: () => client.identify({ distinctId: u2, properties: { $anon_distinct_id: a2 } }),
  later: () => client.capture({ distinctId: a2, event: 'later' }),
  other: () => client.identify({ distinctId: u3, properties: { $anon_distinct_id: a3, name: 'other' } }),
  // posthog-node: $create_alias from distinctId (u3) with alias u2.
  alias: () => client.alias({ distinctId: u3, alias: u2 }),
  dangerous: () => client.capture({ distinctId: u3, event: '$merge_dangerously', properties: { alias: u2 } }),
  personless: () =>
    client.capture({
      distinctId: `ghost-${run}`,
      event: 'ghost',
      properties: { $process_person_profile: false, $set: { x: 1 } },
    }),
}

if (step === undefined) {
  client.capture({ distinctId: anon, event: 'sdk test event', properties: { run, n: 1, $set_once: { first_seen_run: run } } })
  client.identify({ distinctId: user, properties: { $anon_distinct_id: anon, plan: 'pro' } })
  client.alias({ distinctId: user, alias: anon })
  client.groupIdentify({ groupType: 'company', groupKey: `acme-${run}`, properties: { name: 'Acme' }, distinctId: user })
  client.capture({ distinctId: user, event: 'grouped', groups: { company: `acme-${run}` }, properties: { run } })
} else {
  steps[step]()
}
await client.shutdown()
process.exit(failed ? 1 : 0)
