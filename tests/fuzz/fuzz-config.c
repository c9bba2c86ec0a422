/* strata: libFuzzer harness for the pool YAML parser (make fuzz).
 *
 * Any document either parses or is refused with a message; the
 * sanitizers catch the rest.  Paths in it are resolved against a
 * directory that does not exist, so nothing is read or created.  The
 * seeds are the YAML files under etc/strata.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  char *text = malloc (size + 1);
  struct config *cfg = NULL;

  if (!text)
    abort ();
  memcpy (text, data, size);
  text[size] = '\0';
  if (config_parse_string (text, "fuzz.yaml", "/nonexistent/strata-fuzz",
                           &cfg) == 0)
    config_free (cfg);
  else if (strata_last_error ()[0] == '\0') {
    fprintf (stderr, "fuzz-config: a document refused with no message\n");
    abort ();
  }
  free (text);
  return 0;
}
