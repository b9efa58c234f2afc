/* owl registry verbs. */
#include "cmd.h"

const owl_command cmd_registry_commands[] = {
	{0},
};
