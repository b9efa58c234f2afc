/* owl license verbs. */
#include "cmd.h"

const owl_command cmd_license_commands[] = {
	{0},
};
