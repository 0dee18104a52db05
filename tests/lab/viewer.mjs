// viewer.mjs: an operator's browser on the lab console, for the test.
//
// Headless Chromium (the system's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded) opens the noVNC page, waits
// until it is connected and its screen equals a screendump of the VM, then
// stays on the page until the session ends and records how it ended.
//
// Usage: node viewer.mjs URL OUT [--expect FILE.ppm] [--hold SECONDS] [--ready-timeout SECONDS]
//
// Writes OUT.events, one line per event: "<ms> <event> [detail]":
//   ws-open, ws-closed       the noVNC WebSocket (seen by the browser)
//   connected                noVNC shows the session as connected
//   match F / mismatch F     the canvas against an expected screendump,
//                            F = fraction of pixels that differ
//   ready                    connected and compared (screenshots saved)
//   disconnected STATUS      noVNC shows the session as over
//   still-connected          --hold ran out with the session open
//   error MESSAGE
// and OUT-page.png, OUT-canvas.png, OUT-disconnected.png.
//
// While it waits, each new line "expect FILE.ppm TAG" appended to OUT.cmd
// compares the canvas again (events "match-TAG F" / "mismatch-TAG F").
// Exits 0 unless the browser could not be driven at all.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// A pixel differs when a channel is off by more than this (lossless VNC
// encodings give 0; this only absorbs rounding).
const CHANNEL_TOLERANCE = 8;
// The canvas matches when at most this fraction of pixels differ.
const MATCH_FRACTION = 0.001;

const args = process.argv.slice(2);
if (args.length < 2) {
  console.error('usage: node viewer.mjs URL OUT [--expect FILE.ppm] [--hold SECONDS] [--ready-timeout SECONDS]');
  process.exit(64);
}
const [url, out] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const expect = opt('--expect', null);
const holdMs = Number(opt('--hold', '60')) * 1000;
const readyMs = Number(opt('--ready-timeout', '30')) * 1000;

const t0 = Date.now();
const eventsFile = `${out}.events`;
fs.writeFileSync(eventsFile, '');
const log = (event, detail = '') => {
  fs.appendFileSync(eventsFile, `${Date.now() - t0} ${event}${detail ? ' ' + detail : ''}\n`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Binary PPM (P6, maxval 255), as QEMU's screendump writes it.
function readPPM(file) {
  const buf = fs.readFileSync(file);
  const header = [];
  let pos = 0;
  while (header.length < 4) {
    while (pos < buf.length && /\s/.test(String.fromCharCode(buf[pos]))) pos++;
    if (buf[pos] === 0x23) { // comment
      while (pos < buf.length && buf[pos] !== 0x0a) pos++;
      continue;
    }
    let tok = '';
    while (pos < buf.length && !/\s/.test(String.fromCharCode(buf[pos]))) tok += String.fromCharCode(buf[pos++]);
    header.push(tok);
  }
  pos++; // the single whitespace after maxval
  const [magic, w, h, max] = header;
  if (magic !== 'P6' || max !== '255') throw new Error(`${file}: not a P6 PPM with maxval 255`);
  const width = Number(w), height = Number(h);
  return { width, height, rgb: buf.subarray(pos, pos + width * height * 3) };
}

// Fraction of canvas pixels that differ from the PPM `ppm` (1 if the
// canvas is missing or of another size). Computed in the page: the
// expected pixels go in once, only a number comes back.
async function difference(page, ppm) {
  return page.evaluate(({ width, height, b64, tol }) => {
    const c = document.querySelector('#noVNC_container canvas');
    if (!c || c.width !== width || c.height !== height) return 1;
    const d = c.getContext('2d').getImageData(0, 0, width, height).data;
    const rgb = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    let differ = 0;
    for (let i = 0, n = width * height; i < n; i++) {
      if (Math.abs(d[i * 4] - rgb[i * 3]) > tol || Math.abs(d[i * 4 + 1] - rgb[i * 3 + 1]) > tol
          || Math.abs(d[i * 4 + 2] - rgb[i * 3 + 2]) > tol) differ++;
    }
    return differ / (width * height);
  }, { width: ppm.width, height: ppm.height, b64: Buffer.from(ppm.rgb).toString('base64'), tol: CHANNEL_TOLERANCE });
}

// Compares the canvas with FILE until it matches or `ms` pass.
async function compare(page, file, ms) {
  const ppm = readPPM(file);
  const until = Date.now() + ms;
  for (;;) {
    const f = await difference(page, ppm);
    if (f <= MATCH_FRACTION || Date.now() >= until) return f;
    await sleep(250);
  }
}

const state = (page) => page.evaluate(() => ({
  connected: document.documentElement.classList.contains('noVNC_connected'),
  status: (document.getElementById('noVNC_status') || {}).textContent || '',
}));

let context;
let profile;
try {
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-viewer-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 960, height: 540 },
  });
  const page = context.pages()[0] || (await context.newPage());
  let wsClosed = false;
  page.on('websocket', (ws) => {
    log('ws-open', ws.url());
    ws.on('close', () => { wsClosed = true; log('ws-closed'); });
  });
  await page.goto(url, { timeout: readyMs });
  await page.waitForFunction(() => document.documentElement.classList.contains('noVNC_connected'),
    null, { timeout: readyMs });
  log('connected', (await state(page)).status.trim());
  if (expect) {
    const f = await compare(page, expect, readyMs);
    log(f <= MATCH_FRACTION ? 'match' : 'mismatch', f.toFixed(6));
  }
  const dataUrl = await page.evaluate(() => document.querySelector('#noVNC_container canvas').toDataURL('image/png'));
  fs.writeFileSync(`${out}-canvas.png`, Buffer.from(dataUrl.split(',')[1], 'base64'));
  await page.screenshot({ path: `${out}-page.png` });
  log('ready');

  // Hold the session open until it ends or --hold runs out.
  const cmdFile = `${out}.cmd`;
  let done = 0;
  const until = Date.now() + holdMs;
  for (;;) {
    const s = await state(page);
    if (!s.connected || wsClosed) {
      // Let noVNC finish showing the end of the session.
      await page.waitForFunction(() => !document.documentElement.classList.contains('noVNC_connected'),
        null, { timeout: 5000 }).catch(() => {});
      await sleep(300);
      await page.screenshot({ path: `${out}-disconnected.png` });
      log('disconnected', (await state(page)).status.trim());
      break;
    }
    if (Date.now() >= until) {
      log('still-connected');
      break;
    }
    if (fs.existsSync(cmdFile)) {
      const lines = fs.readFileSync(cmdFile, 'utf8').split('\n').filter(Boolean);
      for (; done < lines.length; done++) {
        const [verb, file, tag] = lines[done].split(' ');
        if (verb !== 'expect') continue;
        const f = await compare(page, file, readyMs);
        log(`${f <= MATCH_FRACTION ? 'match' : 'mismatch'}-${tag}`, f.toFixed(6));
      }
    }
    await sleep(200);
  }
} catch (e) {
  log('error', String(e && e.message ? e.message : e).split('\n')[0]);
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
}
