#include "espresso/cp/ike_message.h"
