// operator.mjs: an operator's hands on a lab console, for the test.
//
// Headless Chromium (the system's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded) opens a console page at a
// desktop or a phone-sized viewport, types a line into it as key presses,
// optionally clicks into it, takes screenshots, then stays on the page
// until the session ends and records how it ended.
//
// Usage: node operator.mjs vnc|sol URL OUT [--phone] [--type TEXT] [--click]
//                          [--shown-file FILE] [--trust-spki B64] [--hold SECONDS]
//                          [--ready-timeout SECONDS]
//
//   vnc   the noVNC page of console-gateway: connected when noVNC says so;
//         keys go to noVNC's canvas (at phone size, through noVNC's
//         on-screen keyboard button, as a phone's user types).
//   sol   the xterm.js page of sol-gateway: connected when the SOL client
//         says "SOL Session operational"; the test reads the terminal's
//         text back ("TYPED: TEXT" is what the lab guest answers).
//   --phone   412x915 CSS pixels, touch, a mobile user agent (a
//             mid-range Android phone); default 1280x800 desktop.
//   --click   a left click (a tap with --phone) in the middle of the
//             console, once connected.
//   --shown-file  after typing, wait (up to --ready-timeout) for FILE to
//             appear before the "typed" screenshot: the test creates it
//             once it has seen the line arrive on the guest.
//
// Writes OUT.events, one line per event: "<ms> <event> [detail]":
//   connected, clicked, prompt (sol: Enter got the guest's answer),
//   typed TEXT, shown (sol: the answer is on the
//   terminal; vnc: the test said so), ws-closed, disconnected STATUS,
//   still-connected, error MESSAGE, closed (the browser is gone)
// and OUT-typed.png (the page once the line is shown) and
// OUT-disconnected.png. Exits 0 unless the browser could not be driven.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const PHONE = {
  viewport: { width: 412, height: 915 },
  deviceScaleFactor: 1,
  isMobile: true,
  hasTouch: true,
  userAgent: 'Mozilla/5.0 (Linux; Android 14; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36',
};
const DESKTOP = { viewport: { width: 1280, height: 800 } };

const args = process.argv.slice(2);
if (args.length < 3 || !['vnc', 'sol'].includes(args[0])) {
  console.error('usage: node operator.mjs vnc|sol URL OUT [--phone] [--type TEXT] [--click] [--shown-file FILE] [--hold SECONDS] [--ready-timeout SECONDS]');
  process.exit(64);
}
const [mode, url, out] = args;
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const phone = args.includes('--phone');
// --trust-spki B64: trust the TLS certificate whose public key has this
// SHA-256 (base64), as if a CA had signed it: the test's own certificate.
const spki = opt('--trust-spki', null);
const click = args.includes('--click');
const text = opt('--type', null);
const shownFile = opt('--shown-file', null);
const holdMs = Number(opt('--hold', '60')) * 1000;
const readyMs = Number(opt('--ready-timeout', '30')) * 1000;

const t0 = Date.now();
const eventsFile = `${out}.events`;
fs.writeFileSync(eventsFile, '');
const log = (event, detail = '') => {
  fs.appendFileSync(eventsFile, `${Date.now() - t0} ${event}${detail ? ' ' + detail : ''}\n`);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Waits up to `ms` for the file to exist.
async function waitFile(file, ms) {
  const until = Date.now() + ms;
  while (!fs.existsSync(file)) {
    if (Date.now() >= until) return false;
    await sleep(100);
  }
  return true;
}

const connected = {
  vnc: (page) => page.evaluate(() => document.documentElement.classList.contains('noVNC_connected')),
  sol: (page) => page.evaluate(() => document.documentElement.classList.contains('sol-connected')),
};
const statusText = {
  vnc: (page) => page.evaluate(() => ((document.getElementById('noVNC_status') || {}).textContent || '').trim()),
  sol: (page) => page.evaluate(() => document.getElementById('status').textContent.trim()),
};
const solScreen = (page) => page.evaluate(() => window.solScreen());

// The element that takes the keys, and where to click.
async function target(page) {
  const sel = mode === 'vnc' ? '#noVNC_container canvas' : '#term .xterm-screen';
  const el = await page.waitForSelector(sel, { timeout: readyMs });
  return el.boundingBox();
}

// At phone size, after typing: put the on-screen keyboard and noVNC's
// control bar away again, as a phone's user does to see the whole screen.
// The handle is partly under the open bar: tap its visible edge, once it
// has stopped moving (at most 5 s).
async function closeControlBar(page) {
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  let prev = null;
  for (let i = 0; i < 50; i++) {
    const b = await (await page.$('#noVNC_control_bar_handle')).boundingBox();
    if (prev && b.x === prev.x && b.y === prev.y) break;
    prev = b;
    await sleep(100);
  }
  await page.touchscreen.tap(prev.x + prev.width - 8, prev.y + prev.height / 2);
  await page.waitForFunction(() => !document.getElementById('noVNC_control_bar')
    .classList.contains('noVNC_open'), null, { timeout: 3000 })
    .catch(() => log('control-bar-left-open'));
}

let context;
let profile;
try {
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-operator-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: spki ? [...FLAGS, `--ignore-certificate-errors-spki-list=${spki}`] : FLAGS,
    ...(phone ? PHONE : DESKTOP),
  });
  const page = context.pages()[0] || (await context.newPage());
  let wsClosed = false;
  page.on('websocket', (ws) => {
    log('ws-open', ws.url());
    ws.on('close', () => { wsClosed = true; log('ws-closed'); });
  });
  await page.goto(url, { timeout: readyMs });
  await page.waitForFunction(mode === 'vnc'
    ? () => document.documentElement.classList.contains('noVNC_connected')
    : () => document.documentElement.classList.contains('sol-connected')
      && window.solScreen().includes('SOL Session operational'),
  null, { timeout: readyMs });
  log('connected', await statusText[mode](page));

  const box = await target(page);
  const cx = box.x + box.width / 2;
  const cy = box.y + box.height / 2;
  if (click) {
    if (phone) await page.touchscreen.tap(cx, cy);
    else await page.mouse.click(cx, cy);
    log('clicked', `${Math.round(cx)},${Math.round(cy)}`);
  } else if (phone) {
    // A tap puts the focus (and a phone's keyboard) on the console.
    await page.touchscreen.tap(cx, cy);
  } else {
    await page.focus(mode === 'vnc' ? '#noVNC_container canvas' : '#term textarea');
  }
  if (mode === 'vnc' && phone) {
    // As on a phone: open noVNC's control bar and tap its keyboard button,
    // which brings up the on-screen keyboard (noVNC's hidden text input).
    await page.tap('#noVNC_control_bar_handle');
    await page.waitForSelector('#noVNC_keyboard_button', { state: 'visible', timeout: readyMs });
    await page.tap('#noVNC_keyboard_button');
    await page.waitForFunction(() => document.activeElement
      && document.activeElement.id === 'noVNC_keyboardinput', null, { timeout: readyMs });
  } else if (mode === 'vnc') {
    // noVNC takes keys on its canvas; make sure that is where they go.
    await page.evaluate(() => document.querySelector('#noVNC_container canvas').focus());
  } else {
    await page.focus('#term textarea');
  }

  if (mode === 'sol' && text !== null) {
    // As an operator does on a serial console: Enter until the server's
    // prompt answers, so the line is not typed before the SOL path is up
    // (at most 10 tries, each waiting up to 2 s for the answer).
    let answered = false;
    for (let i = 0; i < 10 && !answered; i++) {
      const before = (await solScreen(page)).split('TYPED:').length;
      await page.keyboard.press('Enter');
      answered = await page.waitForFunction((n) => window.solScreen().split('TYPED:').length > n, before,
        { timeout: 2000 }).then(() => true, () => false);
    }
    log(answered ? 'prompt' : 'no-prompt');
  }
  if (text !== null) {
    // One key press per character, at a typist's pace, then Enter.
    await page.keyboard.type(text, { delay: 60 });
    await page.keyboard.press('Enter');
    log('typed', text);
    let shown;
    if (mode === 'sol') {
      shown = await page.waitForFunction((t) => window.solScreen().includes(`TYPED: ${t}`), text,
        { timeout: readyMs }).then(() => true, () => false);
      if (!shown) log('not-shown', JSON.stringify((await solScreen(page)).trim().split('\n').slice(-4)));
    } else {
      shown = shownFile ? await waitFile(shownFile, readyMs) : true;
      if (phone) await closeControlBar(page);
      await sleep(300); // let the last framebuffer update paint
    }
    if (shown) log('shown');
    await page.screenshot({ path: `${out}-typed.png` });
  } else if (click && shownFile) {
    if (await waitFile(shownFile, readyMs)) log('shown');
    await sleep(300);
    await page.screenshot({ path: `${out}-typed.png` });
  }
  if (mode === 'sol') fs.writeFileSync(`${out}.screen`, await solScreen(page));
  log('ready');

  // Hold the session open until it ends or --hold runs out.
  const until = Date.now() + holdMs;
  for (;;) {
    if (!(await connected[mode](page)) || wsClosed) {
      await sleep(300);
      await page.screenshot({ path: `${out}-disconnected.png` });
      log('disconnected', await statusText[mode](page));
      break;
    }
    if (Date.now() >= until) {
      log('still-connected');
      break;
    }
    await sleep(200);
  }
} catch (e) {
  log('error', String(e && e.message ? e.message : e).split('\n')[0]);
  process.exitCode = 1;
} finally {
  if (context) await context.close().catch(() => {});
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  log('closed');
}
