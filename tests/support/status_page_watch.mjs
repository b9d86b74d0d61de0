// Watches netsky's status page in headless Debian chromium, without reloading it.
// Usage: node status_page_watch.mjs URL NODE
// Prints "fresh" once NODE shows fresh, then waits for NODE to show suspect
// (the test stops it meanwhile) and prints "suspect". Exits 1 on a timeout,
// or if the page was navigated again (a reload would not prove the page updates itself).
import { chromium } from 'playwright-core';

const [url, node] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });
  await page.goto(url);
  const state = page.locator('#nodes tbody tr').filter({ has: page.locator('td', { hasText: new RegExp(`^${node}$`) }) }).locator('td').nth(1);
  await state.filter({ hasText: /^fresh$/ }).waitFor({ timeout: 30000 });
  console.log('fresh');
  await state.filter({ hasText: /^suspect$/ }).waitFor({ timeout: 30000 });
  if (navigations !== 1) throw new Error(`the page was navigated ${navigations} times`);
  console.log('suspect');
} catch (e) {
  console.error(String(e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
