// Fake FlashInfer package header: stands in for the installed package's
// data/include tree. Touching it (as a re-install does) makes every module
// that includes it out of date for ninja.
#pragma once
