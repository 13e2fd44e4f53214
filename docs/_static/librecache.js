// Narrow screens show each row of a table with a header row as a card
// (see librecache.css): label every cell with its column's header.
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("article table.docutils")) {
    const headers = table.querySelectorAll("thead tr:last-child th");
    if (headers.length < 2) continue;
    const labels = Array.from(headers, (th) => th.textContent.trim());
    for (const row of table.querySelectorAll("tbody tr")) {
      Array.from(row.children).forEach((cell, index) => {
        if (labels[index]) cell.setAttribute("data-label", labels[index]);
      });
    }
    table.classList.add("librecache-stacked");
  }
});
