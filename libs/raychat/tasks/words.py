"""A built-in English word list for the synthetic spelling tasks: the 5008 most frequent lowercase words
(3-14 letters) of the shared pretraining text (English Wikipedia, ../shared/data/pretrain shards 0-4), plus a few
classic letter-counting words (strawberry, mississippi, bookkeeper, ...). Built in so that the tasks need no
download; pass `words=` to the tasks to use a bigger list (nanochat uses dwyl/english-words, 370K words).
"""

WORDS: tuple[str, ...] = tuple("""
abandoned abilities ability able aboard abolished about above abroad absence absorbed abstract abuse academic
academy accept accepted accepts access accessible accident acclaim acclaimed accommodate accommodation accompanied
accompanying accomplished accordance according account accounting accounts accurate accused achieve achieved
achievement achievements achieving acid acknowledged acoustic acquire acquired acquisition acre acres across act
acted acting action actions activated active actively activism activist activists activities activity actor actors
actress acts actual actually adaptation adapted add added adding addition additional additionally address addressed
addresses adjacent administered administration administrative administrator admitted adopted adoption adult adults
advance advanced advances advancing advantage adventure advertising advice advised advisor advisory advocacy
advocate advocated aerial aesthetic affair affairs affect affected affiliate affiliated after aftermath afternoon
afterwards again against age aged agencies agency agent agents ages aggregate aggregator aggressive ago agree agreed
agreement agrees agricultural agriculture ahead aid aim aimed aims air aircraft aired airing airline airport album
albums alcohol algorithm align alive all allegations alleged allegedly alliance allies allocated allow allowed
allowing allows almost alone along alongside alpine already also altar altered alternate alternative although
altitude always amateur ambassador among amongst amount amounts analysis ancient and angle angry animal animals
animated animation anime anniversary announced announcement annual annually another answer anthem anthology anti
anxiety any anyone anything apart apartment app apparent apparently appeal appealed appear appearance appearances
appeared appearing appears application applications applied apply appointed appointment approach approached
approaches appropriate approval approved approximately arch archaeological architect architects architectural
architecture archive archives are area areas arena argued argues arguing argument arid arm armed arms army around
arranged arrangement arrangements arrest arrested arrival arrive arrived arrives arriving art article articles
artificial artillery artist artistic artists arts artwork artworks aside ask asked asking asks aspect aspects
assassination assault assembled assembly assessment assets assigned assignment assist assistance assistant assisted
assists associate associated association associations assumed asylum athlete athletes athletics atmosphere attached
attack attacked attacking attacks attempt attempted attempting attempts attend attendance attended attending
attention attitude attorney attract attracted attributed auction audience audiences audio aunt author authored
authorities authority authors automated automatic automatically autonomous autumn available average averaged
aviation avoid award awarded awards aware awareness away axis baby bachelor back backed background backing bacteria
bad badge badly badminton bag balance balcony ball balloon ballot ban banana band bands bank banker banking banks
banned banner bar bars base baseball based basement bases basic basin basis basketball bass bassist battalion
battalions batteries battery battle battles bay beach beam bear bearing bears beat beaten beating beats beautiful
beauty became because become becomes becoming bed been beer before began begin beginning begins begun behalf
behavior behaviour behind being belief beliefs believe believed believes bell belong belonged belonging belongs
below belt bench beneath benefit benefits best better between beyond biathlon bid big biggest bill billion bin
binding biography biological biology bird birds birth birthday bishop bit black blind block blocked blocks blog
blood blue blues board boarding boards boat boats bodies body bold bomb bombing bombs bond bone bonus book
bookkeeper books border borders born boss both bottom bought bound boundaries boundary bounded bout bow box boxer
boxing boy boycott boyfriend boys brain branch branches brand brands break breakdown breaking breaks breast breeding
brick bridge bridges brief briefly brigade bright bring bringing brings broad broadcast broadcaster broadcasting
broader broke broken bronze brother brothers brought brown bubble budget build building buildings built burial
buried burned burning bus buses business businesses businessman but buy buying cabin cabinet cable calculated
calendar call called calling calls came camera cameras camp campaign campaigns camps campus can canal cancelled
cancer candidate candidates cannabis cannot cap capable capacity capital captain capture captured capturing car
carbon card cards care career careers cargo carried carrier carries carry carrying cars carved case cases cash cast
casting castle casualties catalogue catch categories category caterpillar cathedral cattle caught cause caused
causes causing cavalry cave ceased ceiling celebrate celebrated celebration celebrities cell cells cement cemetery
census cent center centered centers central centre centres centuries century ceremonies ceremony certain certainly
certificate certified chain chair chaired chairman challenge challenged challenges challenging chamber champion
champions championship championships chance change changed changes changing channel channels chapel chapter chapters
character characteristic characterized characters charge charged charges charity chart charted charter charts
chemical chemistry chess chief child childhood children choice choir choose chorus chose chosen church churches
cinema circa circle circuit circuits circular circulation circumstances cited cities citing citizen citizens
citizenship city civic civil civilian civilians clad claim claimed claiming claims clan clans class classes classic
classical classification classified classroom classrooms clay clean clear cleared clearly clerk client clients
climate climbing clinical clock close closed closely closer closest closing closure clothes clothing club clubs
coach coached coaches coaching coal coalition coast coastal coat code coding coffee coins cold collaborated
collaboration collaborative collapse collapsed colleague colleagues collect collected collecting collection
collections collective collector college colleges colonel colonial colonies colony color colored colors colour
colours colspan colt column columns com combat combination combined combining come comedian comedy comes comfort
comic comics coming command commanded commander commanding commenced commentary commented comments commerce
commercial commercially commission commissioned commissioner commit commitment committed committee committees common
commonly communication communications communist communities community compact companies company compared comparison
compensation compete competed competes competing competition competitions competitive competitors compilation
compiled complaint complete completed completely completing completion complex complicated component components
composed composer composition compositions compound comprehensive comprised comprises comprising computer computers
conceived concentrated concentration concept concepts concern concerned concerning concerns concert concerts
concluded conclusion concrete condemned condition conditions conduct conducted conducting conductor cone conference
conferences confidence confirmed conflict conflicts confused congregation conjunction connect connected connecting
connection connections connects consecrated consecutive consensus consequence consequences conservation conservative
consider considerable consideration considered considering considers consist consisted consistent consistently
consisting consists conspiracy constant constantly constituencies constituency constitution constitutional construct
constructed construction consul consultant consulting consumer consumers consumption contact contacted contacts
contain contained containing contains contemporary content contest contestants contested context continental
continue continued continues continuing continuous contract contractor contracts contrast contribute contributed
contributing contribution contributions contributor control controlled controls controversial controversy convention
conventional conversation conversion converted convicted convince convinced convoy cooperation cooperative
coordinator copies copper copy copyright core corner corporate corps corpse correct correspondence corresponding
corruption cost costs costume cotton could council councillor counsel count counted counter counties countries
country counts county coup couple course courses court courts cousin cover coverage covered covering covers craft
crash create created creates creating creation creative creator credit credited credits crew crews cricket cricketer
crime crimes criminal crisis criteria critic critical critically criticised criticism criticized critics crop crops
crore cross crossed crosses crossing crossover crowd crown crowned crucial cultivation cultural culture cultures cup
curated curator current currently curriculum curve curved custom customer customers customs cut cuts cutting cycle
cylinder daily dam damage damaged dance dancer dancing danger dangerous dark data database date dated dates dating
daughter daughters day days dead deal dealing deals dealt dean death deaths debate debt debut debuted decade decades
deceased decide decided decides decision decisions deck declared decline declined decorated decorative decrease
decreased decree dedicated deemed deep deeply defeat defeated defeating defence defend defendant defended defender
defending defense defensive defined definition degree degrees del delayed delays delegate delegation deliver
delivered delivering delivery della demand demanded demanding demands demo democracy democratic demolished
demolition demonstrate demonstrated demonstrating demonstration demonstrations denied density departed department
departments departure dependent depending depicted depicting depicts deployed deposits depot depression depth deputy
der derived des descendant descendants descent describe described describes describing description desert design
designated designation designed designer designers designing designs desire despite destination destroy destroyed
destroyers destruction detail detailed details detection detective determine determined develop developed developer
developers developing development developments develops device devices devoted diagnosed dialect dialogue diameter
did didn die died dies diesel difference differences different difficult difficulties difficulty digital dimensional
dining dinner diocese diploma diplomat diplomatic direct directed directing direction directly director directors
disability disabled disappearance disappeared disaster disbanded disc discipline discontinued discover discovered
discovers discovery discrimination discuss discussed discussion discussions disease diseases dismissed disorder
displacement display displayed displays dispute dissertation dissolution dissolved distance distant distinct
distinction distinctive distinguished distributed distribution district districts dive diverse diversity divided
diving division divisions divorce divorced doctor doctoral doctorate doctors document documentary documented
documents does doesn dog doing dollars domain dome domestic dominant dominated don donated donations done door doors
dorsal double doubles doubt down download downtown dozen draft drafted drag drama dramatic draw drawing drawings
drawn draws dream dreams dress drew drill drinking drive driven driver drivers driving drop dropped dropping drove
drug drugs drum drummer drums dry dual dubbed due duo duration during duties duty dying dynamic dynamics dynasty
each earlier earliest early earn earned earning earth earthquake easier easily east eastern easy ecology economic
economics economist economy edge edges edited editing edition editions editor editorial editors educated education
educational educator effect effective effectively effects efficiency efficient effort efforts egg eggs eight
eighteen eighth either elder elderly eldest elect elected election elections electoral electors electric electrical
electricity electronic element elementary elements elevated elevation eleven eleventh eligible eliminated
elimination elite else elsewhere embarked embassy emerged emergency emerging emigrated emissions emotional emperor
emphasis employed employee employees employment empty enable enabled enclosed encompasses encounter encountered
encourage encouraged encouraging end ended endemic ending endorsed ends enemy energy enforcement engage engaged
engagement engaging engine engineer engineering engineers engines enjoyed enlisted enough enrolled ensemble ensure
enter entered entering enterprise enters entertainment entire entirely entitled entity entrance entrants
entrepreneur entries entry environment environmental environments episode episodes epithet equal equality equally
equation equipment equipped equity equivalent era erect erected error escape escaped especially essays essential
essentially establish established establishing establishment estate estates estimated estriol estrone etc ethnic
even evening event events eventual eventually ever every everyday everyone everything evidence evil evolution
evolved exact exactly examination examined example examples excellence excellent except exception exchange exclusive
exclusively executed execution executive exercise exhibit exhibited exhibition exhibitions exhibits exile exist
existed existence existing exists exit expand expanded expanding expansion expected expedition expelled expenses
expensive experience experienced experiences experiment experimental experiments expert expertise experts explain
explained explains exploration explore explored explores exploring explosion export exposed exposure express
expressed expression extend extended extending extends extension extensive extensively extent exterior external
extinct extra extreme extremely eye eyes facade face faced faces facilitate facilities facility facing fact factor
factors factory faculty failed failing failure fair fairly faith fake fall fallen falling falls false fame familiar
families family famous fan fans fantasy far farm farmer farmers farming fashion fast faster fastest fate father
fault favor favorable favorite favour favourite fear feature featured features featuring federal fee feed feeding
feel feeling feelings feels fees feet fell fellow fellowship felt female females feminist festival festivals few
fewer fiction fictional field fields fifteen fifth fifty fight fighter fighters fighting fights figure figures file
filed files fill filled film filmed filming filmmaker films final finale finalist finally finals finance financial
financially find finding findings finds fine finish finished finishing fire fired fires firing firm firms first fish
fishing fit fitted five fixed fixtures flag flat fled flee fleet flew flight flights floating floor floors flow
flower flowering flowers flows fluid fly flying focus focused focuses focusing folk follow followed followers
following follows food foot footage football footballer for force forced forces forcing foreign forest forests form
formal formally format formation formed former formerly forming forms formula fort fortress forty forward fought
found foundation founded founder founders founding four fourteen fourth fracture fragments frame framed framework
franchise fraud free freedom freestyle freight frequency frequent frequently fresh freshman friend friendly friends
friendship from front frozen fruit fuel full fully fun function functional functions fund fundamental funded funding
funds funeral furniture further future gable gain gained gaining galleries gallery game gameplay games gaming gang
gap garden gardens garnered garrison gas gastropod gate gathered gathering gave gay gear gender gene genera general
generally generate generated generation generations genes genetic genome genre genres gens genus geographical
geometry get gets getting ghetto ghost giant gift girl girlfriend girls give given gives giving glass global goal
goalkeeper goals goes going gold golden golf gone good goods got governance governing government governmental
governments governor grade grades gradually graduate graduated graduating graduation grammar grand grandfather
grandmother grandson granite grant granted grants graphic graphics grave graves great greater greatest greatly green
grew grey gross grossing ground grounds group groups grow growing grown grows growth guard guards guest guests
guidance guide guidelines guilty guitar guitarist gun guns habitat had hair half hall hand handed handle handled
handling hands happen happened happy harassment hard harm has hate have having head headed heading headquartered
headquarters heads health healthcare hear heard hearing heart heat heavily heavy hectares height heir held
helicopter help helped helping helps hence her here heritage hero heroes herself hidden hiding high higher highest
highlight highlighted highly highway hill him himself hip hire hired his historian historians historic historical
historically history hit hits hitting hockey hold holder holding holds hole holiday home homeless homes hometown
honor honorary honored honors honour honours hop hope hoped hopes hoping horizontal horror horse horses hospital
hospitals host hosted hosting hosts hot hotel hotels hour hours house housed household households houses housing how
however huge hull human humanitarian humans humor hundred hundreds hunting hurdles husband hybrid hypothesis ibn ice
idea ideal ideas identical identification identified identify identity ill illegal illness illustrated illustrations
image images immediate immediately immigrant immigrants immigration impact impacts impaired imperial implement
implementation implemented importance important imported imposed impossible impressed impressions impressive
imprisoned imprisonment improve improved improvement improvements improving inaugural inaugurated inception inch
incident incidents include included includes including inclusion income incorporated increase increased increases
increasing increasingly incumbent indeed independence independent independently indicate indicated indicates
indicating indigenous individual individuals indoor inducted industrial industries industry infantry influence
influenced influences influential information informed infrastructure inhabitants inhabited inherited initial
initially initiated initiative initiatives injured injuries injury inmates inner innovation innovative input
inscription inscriptions inside inspector inspiration inspired installation installations installed instance instead
institute institution institutions instructor instrument instrumental instruments insurance intact integral
integrated integration intellectual intelligence intended intense intent intention inter interact interaction
interactions interactive interest interested interesting interests interface interim interior intermediate internal
international internet interpretation interpreted intersection intervention interview interviewed interviews into
introduce introduced introducing introduction invasion invented invested investigate investigated investigating
investigation investigations investment investments investor investors invitation invited involve involved
involvement involves involving iron island islands isn isolated isolation issue issued issues items its itself jail
jazz job jobs join joined joining joins joint jointly journal journalism journalist journalists journals journey
judge judges judicial jump junction junior jurisdiction jury just justice keep keeper keeping keeps kept key
keyboard kids kill killed killer killing kills kilometers kilometres kind king kingdom kitchen knee knew knock
knocked knockout know knowing knowledge known knows lab label labellum labor laboratory labour lack lady laid lake
land landed landing landmark lands landscape landscapes language languages lantern lap large largely larger largest
last lasted lasting late later lateral latest latter launch launched lava law laws lawsuit lawyer lay layer layers
layout lead leader leaders leadership leading leads leaf league leagues learn learned learning learns lease least
leave leaves leaving lecture lecturer lectures led left leg legacy legal legally legend legendary legislation
legislative legislature legs leisure length lengths less lessons let letter letters level levels liberal liberation
library license licensed lie lies lieutenant life lifestyle lifetime light lighthouse lighting lights like liked
likely likes limestone limit limited limits line linear lined liner lines lineup link linked links liquid list
listed listening listing lists lit liter literacy literally literary literature little live lived lives living load
loan loaned loans lobes local locality locally locals located location locations locomotive locomotives log logo
long longer longest longtime look looked looking looks lose losers losing loss losses lost lot love loved lover
loves low lower lowest luxury lying lyrics machine machinery machines made magazine magazines magic magnitude maiden
mail main mainly mainstream maintain maintained maintaining maintains maintenance major majority make maker makers
makes making male males mall man manage managed management manager manages managing mandate manga manner mansion
mantle manual manufactured manufacturer manufacturers manufacturing manuscript manuscripts many map maps marathon
marble march marched margin marine maritime mark marked market marketed marketing markets marking marks marriage
married marries marry martial mass massacre massive master masters match matchday matches mate material materials
maternal mathematical mathematician mathematics matrix matter matters mature maximum may mayor mayoral mean meaning
means meant measure measured measures meat mechanical mechanism mechanisms medal medalists medals media medical
medicine medieval medium meet meeting meetings meets melody member members membership membrane memorial memories
memory men mental mention mentioned mentions mentor merchant merchants merely merged merger message messages met
metal meter meters method methods metre metres metropolitan mid middle midfielder might migrants migration mile
miles militants military militia mill million millions mind mine mines mini minimal minimum mining minister
ministers ministry minor minority minute minutes missed missile missing mission missionaries missionary missions
mississippi mix mixed mixtape mobile mode model models modern modified molecular molecules moment moments monastery
money monitor monitoring month monthly months monument monuments moral more morning mosque most mostly moth mother
motion motivated motor motorcycle motors mountain mountains mounted mouth move moved movement movements moves movie
movies moving much multi multiple municipal municipalities municipality murder murdered murders museum museums music
musical musician musicians must mysterious mystery name named namely names naming narrative narrow narrowly nation
national nationalist nationally nations nationwide native natural naturally nature naval near nearby nearest nearly
necessary neck need needed needs negative negotiations neighborhood neighboring neighbourhood neighbouring neither
nephew net network networks neutral never nevertheless new newly news newspaper newspapers next nickname nicknamed
night nine nineteenth ninth noble noise nominated nomination nominations nominee nominees non none nor normal
normally north northeast northern northwest not notable notably note noted notes nothing notice noticed noting noun
novel novelist novels now nuclear number numbered numbers numerous nurse nursing oath object objective objects
observation observed obtain obtained obtaining obvious occasion occasionally occasions occupation occupied occur
occurred occurring occurs ocean odds off offensive offer offered offering offers office officer officers offices
official officially officials offs often oil old older oldest once one ones ongoing online only onto onwards open
opened opening openly opens opera operate operated operates operating operation operational operations operative
operator operators opinion opponent opponents opportunities opportunity opposed opposite opposition opted option
options oral orange orbit orchestra orchid ordained order ordered orders ordinary ore organ organic organisation
organisations organised organisms organization organizations organize organized organizer organizing orientation
oriented origin original originally originated origins other others otherwise our out outbreak outdoor outer outlets
output outscored outside outstanding oval over overall overcome overseas own owned owner owners ownership owns
oxygen pace package page pageant pages paid pain paint painted painter painting paintings pair paired pairs palace
pale pandemic panel panels paper papers para parade parallel parent parents parish park parking parks parliament
parliamentary part partial partially participants participate participated participating participation particular
particularly parties partly partner partnered partners partnership parts party pass passage passed passenger
passengers passes passing passion past pastor patent patents path patient patients patrol patron pattern patterns
pay paying payment payments peace peak peaked peaking peer pen penalty pension people peoples pepper per perceived
percent percentage perception perennial perfect perform performance performances performed performer performers
performing performs perhaps period periods permanent permanently permission permit permitted person personal
personality personally personnel persons perspective petition phase phenomenon philosopher philosophy phone photo
photograph photographer photographs photography photos phrase physical physically physician physics pianist piano
pick picked picture pictures piece pieces pilot pilots pioneer pioneering pit pitch place placed placement places
placing plain plan plane planet planned planning plans plant planted plants plaque plastic plate plates platform
platforms play played player players playing playoff playoffs plays playwright plot plus podcast poem poems poet
poetry point pointed points poisoning pole police policies policy political politically politician politicians
politics poll polls pool poor poorly pop popular popularity population populations porch port portal portfolio
portion portrait portraits portrayal portrayed ports position positioned positions positive positively possession
possibility possible possibly post posted posters postgraduate posting postponed posts potential potentially pounds
poverty power powered powerful powers practical practice practiced practices praise praised praising pre preceded
preceding precision predecessor predicted predominantly preferred pregnant preliminary premier premiere premiered
premises preparation prepare prepared preparing presence present presentation presented presenter presenting
presents preservation preserve preserved presidency president presidential press pressure prestigious prevent
prevented prevention previous previously price prices priest primarily primary prime prince principal principle
principles print printed printing prints prior priority prison prisoner prisoners privacy private privateer
privateers privately prize prizes pro probably problem problems procedure procedures proceed proceeded proceedings
proceeds process processes processing proclaimed produce produced producer producers produces producing product
production productions products profession professional professionally professionals professor profile profit
program programme programmes programming programs progress progressed progressive prohibited project projected
projects prominence prominent promise promised promising promote promoted promoting promotion promotional prompted
proof propaganda proper properly properties property proportional proposal proposals proposed prosecution
protagonist protect protected protection protein proteins protest protests prove proved provide provided provides
providing province provinces provincial provision provisions psychological psychology public publication
publications publicly publish published publisher publishing pull pulled punishment punk pupils purchase purchased
pure purple purpose purposes pursue pursued pursuing pursuit push pushed put puts putting qualification qualified
qualifiers qualify qualifying quality quarter quarterfinals quarters queen question questioned questions quick
quickly quit quite quoted race races racial racing racism radical radio raid raids rail railroad railway railways
rain rainfall raise raised raising rally ran ranch range ranges ranging rank ranked ranking rankings ranks rap rape
rapid rapidly rapper rare rarely raspberry rate rated rates rather rating ratings ratio raw ray reach reached
reaches reaching reaction reactions read reader readers reading reads ready real reality realized realizes really
rear reason reasons rebellion rebels rebounds rebuilt recalled receive received receives receiving recent recently
reception recipient recognised recognition recognize recognized recommended reconstruction record recorded recording
recordings records recover recovered recovery recreational recruit recruited recruiting rectangular recurring red
reddish reduce reduced reducing reduction refer reference references referendum referred referring refers reflect
reflected reflects reform reforms refugees refused refuses regard regarded regarding regards regime regiment
regiments region regional regions register registered registration regular regularly regulation regulations reign
reinforced rejected related relating relation relations relationship relationships relative relatively relatives
relay release released releases releasing relegated relegation relevant reliable relief religion religious relocated
remain remainder remained remaining remains remake remarkable remembered remix remote removal remove removed renamed
rendered renewed renovation renowned reopened repair repairs repeat repeated repeatedly repertoire replace replaced
replacement replacing report reported reportedly reporter reporting reports represent representation representative
represented representing represents reproductive reputation request requested require required requirement
requirements requires requiring rescue rescued research researcher researchers reserve reserved reserves resided
residence residency resident residential residents resign resignation resigned resistance resolution resort resource
resources respect respective respectively respond responded response responses responsibility responsible rest
restaurant restaurants restoration restore restored restricted restrictions result resulted resulting results
resumed retail retain retained retaining retains retired retirement retiring retreat return returned returning
returns reveal revealed reveals revenge revenue reverse review reviewed reviewer reviews revised revival revolution
revolutionary revolves rhythm rice rich ride riders ridge riding rifle rifles right rights ring riots rise rising
risk rival rivals river rivers road roads robin rock rocket rocks role roles roll rolling romance romantic roof room
rooms root roots rose roster rough roughly round rounded rounds route routes row rower rowspan royal rugby ruins
rule ruled ruler rules ruling run runner runners running runs rural safe safety said sailed sailing sale sales salt
same sample samples sanctioned sand sang sank sat satellite save saved saving saw saxophonist say saying says scale
scam scandal scene scenes schedule scheduled scheme scholar scholarly scholars scholarship school schooling schools
science sciences scientific scientist scientists scope score scored scores scoring screen screened screening
screenplay screens screenwriter script sculptor sculpture sculptures sea search searching season seasons seat seats
second secondary seconds secret secretary section sections sector sectors secure secured security see seed seeded
seeds seeing seek seeking seeks seem seemed seems seen sees segment segments seized select selected selection self
sell selling semi semifinal semifinals senator send sending sends senior sense sensitive sent sentence sentenced
separate separated separately separation sequel sequence sequences serial series serious seriously servant serve
served serves service services serving session sessions set sets setting settings settle settled settlement
settlements settlers seven seventeen seventh several severe severely sex sexual sexually shall shallow shape shaped
share shared shares sharing sharp she shed sheet shell shells shelter shift shifted shijie ship shipping ships shock
shoot shooter shooting shop shopping shops shore short shorter shortly shot shots should shoulder show showed
showing shown shows shut siblings side sides siege sight sign signal signals signature signatures signed
significance significant significantly signing signs silent silver similar similarly simple simply simultaneously
since sing singer singers singing single singles sister sisters sit site sites sits sitting situated situation
situations six sixteen sixth size sized ski skier skiing skill skills skin slalom slave slavery slaves slightly
slope slopes slow slowly small smaller smart smooth snail snails snooker snow soccer social socialist societies
society sociology soft software soil solar sold soldier soldiers sole solely solid solo soloist solution solutions
solve some someone something sometimes somewhat son song songs songwriter sons soon sophomore soprano sort sought
soul sound sounds soundtrack source sourced sources south southeast southern southwest space spaces span spare speak
speaker speakers speaking special specialist specialized specializes specializing species specific specifically
specified specimen specimens spectrum speech speed spend spending spent spin spirit spiritual split spoke spoken
spokesperson sponsor sponsored sponsorship sport sporting sports spot spots spotted spread spreading spring sprint
squad squadron square squash squid stability stable stadium staff stage staged stages stairs stake stand standard
standards standing standings stands star starred starring stars start started starter starting starts state stated
statement statements states stating station stationed stations statistics statue statues status statutory stay
stayed staying steals steam steel stem step stepped steps still stint stock stolen stone stones stood stop stopped
stops storage store stored stores storey stories storm story straight strange strategic strategies strategy
strawberry streak stream streaming streams street streets strength stress strict strike strikes striking string
strip strips stroke strong stronger strongly struck structural structure structures struggle struggled struggles
struggling student students studied studies studio studios study studying style styles stylized sub subdistrict
subfamily subject subjects submarine submitted subscription subsequent subsequently subsidiary subspecies
substantial substitute suburb subway succeed succeeded success successful successfully succession successor such
suckers sudden suddenly sued suffered suffering sufficient suffrage sugar suggest suggested suggesting suggests
suicide suit suitable suits sum summary summer summit sun sung sunk super superhero superior supervised supervision
supplied supplies supply support supported supporter supporters supporting supports supposed sure surface surfaces
surgeon surgery surname surprise surrender surrounded surrounding surveillance survey survival survive survived
surviving survivors suspected suspects suspended suspension sustainable sustained swimming switch switched sword
sworn symbol symbols symptoms synthesis system systems table tables tackles tactics tail take taken takes taking
tale talent talented talents talk talking talks tall tank tanks tape target targeted targeting targets tariffs task
tasked tasks taught tax taxes teach teacher teachers teaching team teammate teams tech technical technique
techniques technological technologies technology teenager teeth telephone television tell telling tells temperature
temperatures temple temporarily temporary ten tend tennis tenor tension tensions tenth tenure term terminal terminus
terms terrain territorial territories territory terrorist test tested testimony testing tests text textile texts
than thanks that the theater theaters theatre theatrical their them theme themes themselves then theology
theoretical theories theory therapy there thereafter thereby therefore these thesis they thick thin thing things
think thinking third thirteen thirty this those though thought thousand thousands threat threatened threats three
thriller throne through throughout throw thrown thus ticket tickets tie tied tier ties till timber time times tip
title titled titles titular tobacco today together told tomb ton tone tonnes tons too took tool tools top topic
topics topped torpedo torque total touch touchdowns tour toured touring tourism tourist tournament tournaments tours
toward towards tower towers town townland townlands towns township traces track tracks trade traded trading
tradition traditional traditionally traditions traffic trafficking trail trailer train trained training trains
transactions transfer transferred transferring transformation transformed transit transition translated translation
transmission transport transportation transported trap travel traveled traveling travelled travelling travels
treasurer treat treated treatment treaty tree trees trend trial trials tribal tribe tribes tributary tribute tried
tries trio trip triple trips troops trophy tropical trouble truck trucks true truly trust truth try trying tube
tunnel turn turned turning turns twelve twentieth twenty twice twin two type types typical typically ultimately
unable unanimous uncertain uncle unclear und under undergraduate underground understand understanding understood
undertaken undertook underwent unemployment uniform unincorporated union unions unique unit units universal universe
universities university unknown unless unlike unlikely unofficial unopposed unsuccessful unsuccessfully until unused
unusual unveiled upcoming updated uploaded upon upper upset urban urged usage use used useful user users uses using
usual usually vacant vaginal valign valley valuable value valued values van variant variations varied variety
various vary varying vast vegetation vehicle vehicles venture venue venues verandah verb verse verses version
versions versus vertical very vessel vessels veteran veterans via vice vicinity victim victims victories victory
video videos view viewed viewers views villa village villages violation violence violent violin viral virtual
visible vision visit visited visiting visitors visits visual visually vocal vocalist vocals vocational voice voices
volcanic volleyball volume volumes volunteer volunteers von vote voted voters votes voting voyage vulnerable wage
wages wait waiting walk walking walks wall walls want wanted wants war ward warfare warm warned warning wars was
wasn waste watch watched watching water waters wave waves way ways weak wealth wealthy weapon weapons wear wearing
weather web website wedding week weekend weekly weeks weight weighted welcomed welfare well wells went were west
western what wheat wheel wheels when where whereas whether which while whilst white who whole whom whose why wide
widely wider widespread widow width wife wild wildlife will willing win wind window windows winds wine wing wings
winner winners winning wins winter wire wish wishes with withdraw withdrawal withdrawn withdrew within without
witness witnessed witnesses woman women won wood wooden word words wore work worked worker workers working works
workshop workshops world worldwide worn worship worst worth would wounded wrapped wreck wrestling write writer
writers writes writing writings written wrong wrote yacht yard yards year years yellow yeomanry yet you young
younger youngest your youth yuan zero zone zones
""".split())
