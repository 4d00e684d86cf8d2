// A js-libp2p peer for scripts/interop/run.py.
//
// TCP + Noise + yamux, identify, GossipSub /meshsub/1.2.0 with StrictSign.
// It listens on 127.0.0.1 only (so the p2pnet node could redial it), reads one
// JSON command per line on stdin and writes one JSON event per line on stdout:
//
//   {"id": 1, "cmd": "dial", "addr": "/ip4/127.0.0.1/tcp/N/p2p/12D3..."}
//   {"id": 2, "cmd": "wait_subscribed", "topic": "...", "timeout_ms": 10000}
//   {"id": 3, "cmd": "publish", "topic": "...", "data_hex": "..."}
//   {"id": 4, "cmd": "publish_broadcast", "topic": "...", "text": "..."}
//   {"id": 5, "cmd": "hangup", "peer": "12D3..."}
//   {"id": 6, "cmd": "connections"}
//   {"id": 7, "cmd": "quit"}
//
// Each command is answered by {"ev": "reply", "id": N, "ok": true|false, ...}.
// Unprompted events: "ready", "conn_open", "conn_close", "message".

import './node20.mjs'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, publicKeyFromRaw, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { peerIdFromString } from '@libp2p/peer-id'
import { tcp } from '@libp2p/tcp'
import { decode as mpDecode, encode as mpEncode } from '@msgpack/msgpack'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const TOPICS = (process.env.INTEROP_TOPICS ?? '').split(',').filter(Boolean)
const WIRE_VERSION = 1

const hex = (u8) => Buffer.from(u8).toString('hex')
const fromHex = (s) => new Uint8Array(Buffer.from(s, 'hex'))
const seqnoBytes = (n) => {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(BigInt.asUintN(64, n))
  return new Uint8Array(b)
}
const concat = (a, b) => {
  const out = new Uint8Array(a.length + b.length)
  out.set(a, 0)
  out.set(b, a.length)
  return out
}
const t0 = Date.now()
const emit = (obj) => process.stdout.write(JSON.stringify({ ...obj, t_ms: Date.now() - t0 }) + '\n')

// ------------------------------------------------------------ p2pnet envelope
// p2pnet/wire/ (envelope.py): msgpack list [version, kind, sender, seq, ts_ms, body, sig],
// sig = Ed25519 over packb([version, kind, sender, seq, ts_ms, body]), sender
// = the libp2p peer ID bytes (identity multihash of the Ed25519 key).

async function checkEnvelope (data, fromBytes) {
  const out = { parsed: false }
  let obj
  try {
    obj = mpDecode(data, { useBigInt64: true })
  } catch (err) {
    out.error = `not msgpack: ${err.message}`
    return out
  }
  if (!Array.isArray(obj) || obj.length !== 7) {
    out.error = 'not a 7-element list'
    return out
  }
  const [version, kind, sender, seq, tsMs, body, sig] = obj
  out.parsed = true
  out.version = version
  out.kind = kind
  out.seq = String(seq)
  out.ts_ms = Number(tsMs)
  out.body_len = Array.isArray(body) ? body.length : null
  out.sender_is_from = sender instanceof Uint8Array && hex(sender) === hex(fromBytes)
  // The signed bytes are the envelope with its array header 0x97 changed to
  // 0x96 and the signature (bin8: c4 40 + 64 bytes, the last element) cut off;
  // no re-encoding needed, so any float/int choice of the encoder is kept.
  try {
    if (!(sig instanceof Uint8Array) || sig.length !== 64 || data[0] !== 0x97 ||
        data[data.length - 66] !== 0xc4 || data[data.length - 65] !== 0x40) {
      throw new Error('unexpected envelope layout')
    }
    const signed = new Uint8Array(data.length - 66)
    signed.set(data.subarray(0, data.length - 66))
    signed[0] = 0x96
    const key = publicKeyFromRaw(sender.subarray(6))
    out.sig_ok = Boolean(await key.verify(signed, sig))
  } catch (err) {
    out.sig_ok = false
    out.sig_error = err.message
  }
  return out
}

async function sealBroadcast (privateKey, peerIdBytes, text, seq) {
  const tsMs = BigInt(Date.now())
  // Broadcast body: [text, sent_ns, pad]. seq, ts_ms and sent_ns are all over
  // 2^32: as BigInts they pack as uint64 (0xcf), as Python's msgpack packs
  // them (a Number that large would pack as a float64 with useBigInt64).
  const body = [text, tsMs * 1000000n, new Uint8Array(0)]
  const opts = { useBigInt64: true }
  const signed = mpEncode([WIRE_VERSION, 'broadcast', peerIdBytes, seq, tsMs, body], opts)
  const sig = await privateKey.sign(signed)
  return mpEncode([WIRE_VERSION, 'broadcast', peerIdBytes, seq, tsMs, body, sig], opts)
}

// ------------------------------------------------------------------- main

const privateKey = await generateKeyPair('Ed25519')
const node = await createLibp2p({
  privateKey,
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    pubsub: gossipsub({
      protocols: ['/meshsub/1.2.0'],
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: true,
      emitSelf: false
    })
  }
})
const pubsub = node.services.pubsub
const myIdBytes = node.peerId.toMultihash().bytes
let envSeq = BigInt(Date.now()) * 1000n

node.addEventListener('connection:open', (evt) => {
  const c = evt.detail
  emit({
    ev: 'conn_open',
    peer: c.remotePeer.toString(),
    direction: c.direction,
    addr: c.remoteAddr.toString(),
    encryption: c.encryption,
    multiplexer: c.multiplexer
  })
})
node.addEventListener('connection:close', (evt) => {
  const c = evt.detail
  emit({ ev: 'conn_close', peer: c.remotePeer.toString(), direction: c.direction })
})

pubsub.addEventListener('gossipsub:message', async (evt) => {
  const { msg, msgId, propagationSource } = evt.detail
  if (msg.type !== 'signed') {
    emit({ ev: 'message', topic: msg.topic, signed: false, data_hex: hex(msg.data) })
    return
  }
  const fromBytes = msg.from.toMultihash().bytes
  const seqno = seqnoBytes(msg.sequenceNumber)
  emit({
    ev: 'message',
    topic: msg.topic,
    signed: true,
    from: msg.from.toString(),
    via: propagationSource.toString(),
    from_hex: hex(fromBytes),
    seqno_hex: hex(seqno),
    data_hex: hex(msg.data),
    // the id js used for this message (its msgIdFn, StrictSign default)
    msgid_js_used: Buffer.from(msgId, 'base64').toString('hex'),
    // js's default rule: protobuf public key + seqno
    msgid_js_default: hex(concat(publicKeyToProtobuf(msg.key), seqno)),
    // the GossipSub spec's rule: from (peer id bytes) + seqno
    msgid_spec: hex(concat(fromBytes, seqno)),
    envelope: await checkEnvelope(msg.data, fromBytes)
  })
})

for (const topic of TOPICS) pubsub.subscribe(topic)
await node.start()
emit({ ev: 'ready', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String), topics: TOPICS })

function connectionsInfo () {
  return node.getConnections().map((c) => ({
    peer: c.remotePeer.toString(),
    direction: c.direction,
    status: c.status,
    encryption: c.encryption,
    multiplexer: c.multiplexer,
    protocols: [...new Set(c.streams.map((s) => s.protocol).filter(Boolean))]
  }))
}

async function handle (cmd) {
  switch (cmd.cmd) {
    case 'dial': {
      const started = Date.now()
      const conn = await node.dial(multiaddr(cmd.addr), { signal: AbortSignal.timeout(cmd.timeout_ms ?? 10000) })
      return {
        peer: conn.remotePeer.toString(),
        encryption: conn.encryption,
        multiplexer: conn.multiplexer,
        ms: Date.now() - started
      }
    }
    case 'wait_subscribed': {
      const deadline = Date.now() + (cmd.timeout_ms ?? 10000)
      while (Date.now() < deadline) {
        const subs = pubsub.getSubscribers(cmd.topic).map(String)
        if (subs.length > 0) return { subscribers: subs }
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      throw new Error(`no peer subscribed to ${cmd.topic} within ${cmd.timeout_ms ?? 10000} ms`)
    }
    case 'publish': {
      const res = await pubsub.publish(cmd.topic, fromHex(cmd.data_hex))
      return { recipients: res.recipients.map(String) }
    }
    case 'publish_broadcast': {
      envSeq += 1n
      const data = await sealBroadcast(privateKey, myIdBytes, cmd.text, envSeq)
      const res = await pubsub.publish(cmd.topic, data)
      return { recipients: res.recipients.map(String), bytes: data.length, seq: String(envSeq) }
    }
    case 'hangup': {
      const had = node.getConnections().filter((c) => c.remotePeer.toString() === cmd.peer).length
      await node.hangUp(peerIdFromString(cmd.peer))
      return { closed: had }
    }
    case 'connections':
      return {
        connections: connectionsInfo(),
        mesh: Object.fromEntries(pubsub.getTopics().map((t) => [t, pubsub.getMeshPeers(t).length]))
      }
    case 'quit':
      setTimeout(async () => {
        try { await node.stop() } finally { process.exit(0) }
      }, 0)
      return {}
    default:
      throw new Error(`unknown command ${cmd.cmd}`)
  }
}

const rl = createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch {
    emit({ ev: 'error', error: `bad command line: ${line.slice(0, 80)}` })
    return
  }
  try {
    emit({ ev: 'reply', id: cmd.id, ok: true, ...(await handle(cmd)) })
  } catch (err) {
    emit({ ev: 'reply', id: cmd.id, ok: false, error: String(err?.message ?? err) })
  }
})
rl.on('close', async () => {
  // run.py went away: stop rather than linger as an orphan
  try { await node.stop() } finally { process.exit(0) }
})
