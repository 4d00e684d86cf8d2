// js-libp2p 3.x targets Node.js >= 22 (p-retry 8 says so; it-queue uses
// Promise.withResolvers, new in Node 22). This machine has Node 20: fill in
// the one missing function before any libp2p module loads. peer.mjs imports
// this module first, and ES modules run in import order.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
